"""Train the workshop's CIFAR-10 CNN with a TF2 custom loop on N workers with tf.distribute MWMS.

train_tf.py plus TensorFlow's own MultiWorkerMirroredStrategy (no Horovod, no MPI): one worker
process per instance and one model replica per GPU of it (one per worker on CPUs); each worker
trains on its own shard of the data and the optimizer sums the replicas' gradients with
collective all-reduces, so all replicas keep identical weights. A ``# MWMS:`` sentence sits
above each block that differs from train_tf.py. A custom loop, because Keras 3's ``model.fit``
fails under MWMS (keras-team/keras#20585): this script runs on Keras 2 and 3. SageMaker starts
one worker per instance and sets its TF_CONFIG with
``distribution={"multi_worker_mirrored_strategy": {"enabled": True}}`` (TF >= 2.9); SDK v3's
ModelTrainer sets none, so the script builds it from SM_HOSTS and SM_CURRENT_HOST. Without
SageMaker, start each worker with its own TF_CONFIG:

  TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
              "task": {"type": "worker", "index": 0}}' python train_tf_mwms.py \
      --train data/cifar10/train --validation data/cifar10/validation --eval data/cifar10/eval \
      --sm-model-dir /tmp/model --output-data-dir /tmp/output --epochs 5
  (and the same with "index": 1 in a second shell)
"""

import time

import tensorflow as tf

# MWMS: the helpers in cifar.distributed, and SIGTERM agreed on through a collective.
from cifar import data, distributed, serving
from cifar import model as cnn
from cifar.checkpoints import EpochCheckpoints
from cifar.report import TrainingLog
from cifar.sagemaker_args import parse_args
from cifar.stopping import SigtermStop, mwms_agreement

args = parse_args(__doc__)
# MWMS: the strategy first, before any other TF op; it reads TF_CONFIG, which SDK v2 sets and
# SDK v3 does not (then it is built from SM_HOSTS). Worker 0 logs and keeps what it saves.
distributed.tf_config_from_sm_hosts()
strategy = tf.distribute.MultiWorkerMirroredStrategy()
worker, workers = distributed.mwms_worker()
chief = worker == 0
# MWMS: all workers stop at the same step when any got SIGTERM (a collective per step).
sigterm = SigtermStop(agree=mwms_agreement(strategy))
tf.keras.utils.set_random_seed(args.seed)

# MWMS: each worker reads its own 1/workers of train and validation (equal, disjoint shares), so
# an epoch is still one pass over the data. Every worker evaluates the whole eval set: exact for
# any number of workers, on its own (no collective).
shard = {"num_workers": workers, "worker_index": worker}
train = data.make_dataset(args.train, args.batch_size, training=True, channel="train",
                          seed=args.seed, **shard)
validation = data.make_dataset(args.validation, args.batch_size, training=False,
                               channel="validation", **shard)
evaluation = data.make_dataset(args.eval, args.batch_size, training=False, channel="eval")
train_records = data.count_records(args.train, "train")
# MWMS: records per worker and epoch; replicas are the GPUs of all workers (one per worker on
# CPUs), and this worker's replicas take its batches in turn. Training takes whole rounds of
# batches only: a replica left with an empty batch would write NaN into Keras 3's batch-norm
# statistics (Keras 2 guards it), and the mean spreads it. tf.distribute takes the datasets as
# they are: no auto-sharding, batches per replica.
shard_records = train_records // workers
replicas = strategy.num_replicas_in_sync
local_replicas = replicas // workers
steps = data.steps_per_epoch(shard_records, args.batch_size) // local_replicas or 1
train = train.take(steps * local_replicas)
train = distributed.mwms_dataset(strategy, train)
validation = distributed.mwms_dataset(strategy, validation)

# MWMS: replicas x the batch, so replicas x the learning rate. Variables created in the scope
# (model, optimizer state, Lookahead's copy, metrics) are mirrored on every replica; the metrics
# sum over all.
peak_lr = args.learning_rate * replicas
with strategy.scope():
    precision = cnn.choose_precision(args.precision)  # bfloat16 on CPUs with AMX
    model = cnn.build_model(data.sample_images(args.train), precision=precision)
    optimizer = cnn.build_optimizer(peak_lr, total_steps=steps * args.epochs,
                                    warmup_steps=steps * args.warmup_epochs,
                                    momentum=args.momentum, weight_decay=args.weight_decay)
    cnn.build_optimizer_state(optimizer, model.trainable_variables)
    lookahead = cnn.Lookahead(model, steps, total_steps=steps * args.epochs)
    loss_fn = cnn.loss_fn(args.label_smoothing)
    mean_loss = tf.keras.metrics.Mean()
    accuracy = tf.keras.metrics.SparseCategoricalAccuracy()


@tf.function
def train_step(images, labels):
    with tf.GradientTape() as tape:
        logits = model(images, training=True)  # batch statistics, no test-time views
        # MWMS: the loss is the sum over the global batch of all replicas (also when partial),
        # and the mean loss counts every example.
        per_example = loss_fn(labels, logits)
        loss = tf.nn.compute_average_loss(per_example,
                                          global_batch_size=args.batch_size * replicas)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    mean_loss.update_state(per_example)
    accuracy.update_state(labels, logits)


@tf.function
def test_step(images, labels):
    logits = model(images, training=False)
    mean_loss.update_state(loss_fn(labels, logits))  # MWMS: per example: a batch may be empty
    accuracy.update_state(labels, logits)


# MWMS: one graph runs ``step`` on every replica of this worker.
@tf.function
def replicated(step, images, labels):
    strategy.run(step, args=(images, labels))


def run_epoch(dataset, step, sigterm=None, lookahead=None):
    """Run ``step`` over ``dataset``; returns (mean loss, accuracy) and resets the metrics.

    With ``sigterm``, leaves after the step under way once SIGTERM was agreed on. With
    ``lookahead``, averages the weights after each step and at the end (cifar.model.Lookahead).
    """
    for images, labels in dataset:
        # MWMS: each step runs on every replica of this worker.
        replicated(step, images, labels)
        if lookahead is not None:
            lookahead.after_step(optimizer.iterations)
        if sigterm is not None and sigterm.check():  # SageMaker:
            break
    if lookahead is not None:
        lookahead.end_of_epoch()
    result = float(mean_loss.result()), float(accuracy.result())
    mean_loss.reset_state()
    accuracy.reset_state()
    return result


# SageMaker: checkpoints go to /opt/ml/checkpoints (synced to checkpoint_s3_uri); a restarted
# job, e.g. after a spot interruption, resumes after the last finished epoch.
checkpoints = EpochCheckpoints(args.checkpoint_dir, model, optimizer)
epochs_done, history = checkpoints.restore()
# MWMS: workers that resume at different epochs would hang: they must agree. Every worker
# restores (SageMaker copies checkpoint_s3_uri to every instance), so all start alike; then only
# the chief saves there, the others into throwaway folders: all must take part. The chief prints
# and writes the log.
epochs_done = distributed.mwms_check_agreement(
    strategy, epochs_done, "the epochs done (restored checkpoints)")
checkpoints = EpochCheckpoints(distributed.worker_dir(args.checkpoint_dir, chief),
                               model, optimizer)
log = TrainingLog(args.output_data_dir, args.epochs, history, chief=chief, workers=replicas)
# SageMaker: the platform does not pass SIGTERM on to this script: at max_run (or a spot
# reclaim) the container is killed and SM_MODEL_DIR uploaded as it is. Keep a recent model there.
# MWMS: every worker joins each export (it reads synchronised variables), at the chief's pace.
exports = serving.PeriodicExport(model, distributed.worker_dir(args.sm_model_dir, chief),
                                 chief=chief, agree=mwms_agreement(strategy))
if epochs_done:
    log.say(f"resuming from checkpoint: epochs 1-{epochs_done} done")

for epoch in range(epochs_done + 1, args.epochs + 1):
    start = time.time()
    train_loss, train_accuracy = run_epoch(train, train_step, sigterm, lookahead)
    seconds = time.time() - start
    # MWMS: the workers average their batch-norm statistics: one model to validate.
    distributed.mwms_average_local_statistics(strategy, model)
    if sigterm.stop:  # SageMaker: cut short: no validation, no checkpoint of this epoch
        break
    val_loss, val_accuracy = run_epoch(validation, test_step)
    # MWMS: the learning rate is a mirrored variable on Keras 2; images of all workers.
    log.epoch(epoch, train_loss, train_accuracy, val_loss, val_accuracy,
              tf.convert_to_tensor(optimizer.learning_rate), seconds, shard_records * workers)
    checkpoints.save(epoch, log.history)
    exports.after_epoch(epoch)

# SageMaker: after a SIGTERM (max_run, spot) the window is short: no eval, save, exit 0.
# Evaluated in float32, as exported, whatever precision trained it (cnn.float32_copy).
eval_loss, eval_accuracy = (None, None) if sigterm.stop else cnn.evaluate(
    cnn.float32_copy(model), evaluation, loss_fn)
# SageMaker: everything in SM_MODEL_DIR becomes model.tar.gz; TF Serving loads <dir>/1/.
# MWMS: every worker saves (as with the checkpoints); only the chief's copy is kept. The log
# records the scaled learning rate. Then every worker reports: equal weight fingerprints mean the
# replicas really are in sync.
serving.save_for_serving(model, distributed.worker_dir(args.sm_model_dir, chief),
                         epoch=len(log.history))
log.finish(eval_loss, eval_accuracy, stopped=sigterm.stop, peak_learning_rate=peak_lr,
           precision=precision)
print(distributed.rank_line(worker, workers, shard_records, model, role="worker"), flush=True)
# MWMS: each worker evaluated on its own; none leaves before all have reported (SageMaker's local
# mode stops every container as soon as one exits).
distributed.mwms_barrier(strategy)
