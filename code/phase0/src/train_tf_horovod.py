"""Train the workshop's CIFAR-10 CNN with a TF2 custom loop on N processes with Horovod (2.2).

train_tf.py plus ``horovod.tensorflow``: one process per GPU, each training on its own shard of
the data; DistributedGradientTape averages the gradients, so all processes keep identical weights.
A ``# Horovod:`` sentence sits above each block that differs from train_tf.py. SageMaker starts
the processes with ``distribution={"mpi": {"enabled": True, "processes_per_host": <GPUs>}}``;
without SageMaker, start them yourself:

  mpirun -np 2 python train_tf_horovod.py --train data/cifar10/train \
      --validation data/cifar10/validation --eval data/cifar10/eval \
      --sm-model-dir /tmp/model --output-data-dir /tmp/output --epochs 5
"""

import time

import tensorflow as tf

# Horovod: imported after TensorFlow, so that TF 2.15 exits without errors (Horovod's cached
# tf.functions are then freed before TensorFlow's modules are); cifar.distributed has the helpers.
import horovod.tensorflow as hvd  # isort: skip

from cifar import data, distributed, serving
from cifar import model as cnn
from cifar.checkpoints import EpochCheckpoints
from cifar.report import TrainingLog
from cifar.sagemaker_args import parse_args
from cifar.stopping import SigtermStop

args = parse_args(__doc__)
# Horovod: ranks 0..size-1 over all hosts (local_rank counts within a host), one GPU each where
# there are GPUs. Rank 0 (not local_rank 0, one per host) logs and saves.
hvd.init()
distributed.pin_gpu(hvd.local_rank())
chief = hvd.rank() == 0
# Horovod: all ranks stop at the same step when any got SIGTERM (an allreduce per step).
sigterm = SigtermStop(agree=hvd.allreduce)
tf.keras.utils.set_random_seed(args.seed)

# Horovod: each rank reads its own 1/size of train and validation (equal, disjoint shares), so an
# epoch is still one pass over the data, in size times fewer steps. Every rank evaluates the
# whole eval set: exact for any number of ranks, and every rank holds the model rank 0 saves.
shard = {"num_workers": hvd.size(), "worker_index": hvd.rank()}
train = data.make_dataset(args.train, args.batch_size, training=True, channel="train",
                          seed=args.seed, **shard)
validation = data.make_dataset(args.validation, args.batch_size, training=False,
                               channel="validation", **shard)
evaluation = data.make_dataset(args.eval, args.batch_size, training=False, channel="eval")
train_records = data.count_records(args.train, "train")
# Horovod: records and steps per rank and epoch.
shard_records = train_records // hvd.size()
steps = data.steps_per_epoch(train_records, args.batch_size, hvd.size())

precision = cnn.choose_precision(args.precision)  # bfloat16 on CPUs with AMX
model = cnn.build_model(data.sample_images(args.train), precision=precision)
# Horovod: size x the batch, so size x the learning rate.
peak_lr = args.learning_rate * hvd.size()
optimizer = cnn.build_optimizer(peak_lr, total_steps=steps * args.epochs,
                                warmup_steps=steps * args.warmup_epochs,
                                momentum=args.momentum, weight_decay=args.weight_decay)
lookahead = cnn.Lookahead(model, steps, total_steps=steps * args.epochs)
loss_fn = cnn.loss_fn(args.label_smoothing)
mean_loss = tf.keras.metrics.Mean()
accuracy = tf.keras.metrics.SparseCategoricalAccuracy()


@tf.function
def train_step(images, labels):
    with tf.GradientTape() as tape:
        logits = model(images, training=True)  # batch statistics, no test-time views
        loss = tf.reduce_mean(loss_fn(labels, logits))
    # Horovod: the gradients are averaged over the ranks (an allreduce).
    tape = hvd.DistributedGradientTape(tape)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    mean_loss.update_state(loss)
    accuracy.update_state(labels, logits)


@tf.function
def test_step(images, labels):
    logits = model(images, training=False)
    batch_loss = tf.reduce_mean(loss_fn(labels, logits))
    mean_loss.update_state(batch_loss, sample_weight=tf.shape(labels)[0])  # exact over a split
    accuracy.update_state(labels, logits)


def run_epoch(dataset, step, sigterm=None, lookahead=None):
    """Run ``step`` over ``dataset``; returns (mean loss, accuracy) and resets the metrics.

    With ``sigterm``, leaves after the step under way once SIGTERM was agreed on. With
    ``lookahead``, averages the weights after each step and at the end (cifar.model.Lookahead).
    """
    for images, labels in dataset:
        step(images, labels)
        if lookahead is not None:
            lookahead.after_step(optimizer.iterations)
        if sigterm is not None and sigterm.check():  # SageMaker:
            break
    if lookahead is not None:
        lookahead.end_of_epoch()
    # Horovod: the mean over the ranks' (equal) shards.
    result = hvd.allreduce(tf.stack([mean_loss.result(), accuracy.result()]))
    result = float(result[0]), float(result[1])
    mean_loss.reset_state()
    accuracy.reset_state()
    return result


# SageMaker: checkpoints go to /opt/ml/checkpoints (synced to checkpoint_s3_uri); a restarted
# job, e.g. after a spot interruption, resumes after the last finished epoch.
checkpoints = EpochCheckpoints(args.checkpoint_dir, model, optimizer, enabled=chief)  # Horovod:
epochs_done, history = checkpoints.restore()
# Horovod: rank 0's epoch count, weights and optimizer state (restored or new) go to all ranks,
# one variable at a time (broadcast_variables cannot trace TF 2.11's mixed-precision variables);
# rank 0 prints and writes the log.
epochs_done = int(hvd.broadcast(tf.constant(epochs_done), root_rank=0))
optimizer_state = cnn.build_optimizer_state(optimizer, model.trainable_variables)
for variable in model.variables + optimizer_state:
    variable.assign(hvd.broadcast(variable, root_rank=0))
log = TrainingLog(args.output_data_dir, args.epochs, history,
                  chief=chief, workers=hvd.size())
# SageMaker: the platform does not pass SIGTERM on to this script: at max_run (or a spot
# reclaim) the container is killed and SM_MODEL_DIR uploaded as it is. Keep a recent model there.
exports = serving.PeriodicExport(model, args.sm_model_dir, chief=chief)  # Horovod: rank 0's
if epochs_done:
    log.say(f"resuming from checkpoint: epochs 1-{epochs_done} done")

for epoch in range(epochs_done + 1, args.epochs + 1):
    start = time.time()
    train_loss, train_accuracy = run_epoch(train, train_step, sigterm, lookahead)
    seconds = time.time() - start
    # Horovod: the ranks average their batch-norm statistics: one model to validate.
    distributed.average_local_statistics(model, hvd.allreduce)
    if sigterm.stop:  # SageMaker: cut short: no validation, no checkpoint of this epoch
        break
    val_loss, val_accuracy = run_epoch(validation, test_step)
    # Horovod: images/s counts the images of all ranks.
    log.epoch(epoch, train_loss, train_accuracy, val_loss, val_accuracy,
              optimizer.learning_rate, seconds, shard_records * hvd.size())
    checkpoints.save(epoch, log.history)
    exports.after_epoch(epoch)

# SageMaker: after a SIGTERM (max_run, spot) the window is short: no eval, save, exit 0.
# Evaluated in float32, as exported, whatever precision trained it (cnn.float32_copy).
eval_loss, eval_accuracy = (None, None) if sigterm.stop else cnn.evaluate(
    cnn.float32_copy(model), evaluation, loss_fn)
# SageMaker: everything in SM_MODEL_DIR becomes model.tar.gz; TF Serving loads <dir>/1/.
# Horovod: one model, from rank 0; the log records the scaled learning rate. Then every rank
# reports: equal weight fingerprints mean the ranks really are in sync.
if chief:
    serving.save_for_serving(model, args.sm_model_dir, epoch=len(log.history))
log.finish(eval_loss, eval_accuracy, stopped=sigterm.stop, peak_learning_rate=peak_lr,
           precision=precision)
print(distributed.rank_line(hvd.rank(), hvd.size(), shard_records, model), flush=True)
