"""Train the workshop's CIFAR-10 CNN with Keras ``model.fit`` on N processes with Horovod (1.5).

train_keras.py plus ``horovod.tensorflow.keras``: one process per GPU, each training on its own
shard of the data; DistributedOptimizer averages the gradients, so all processes keep identical
weights. A ``# Horovod:`` sentence sits above each block that differs from train_keras.py.
SageMaker starts the processes with
``distribution={"mpi": {"enabled": True, "processes_per_host": <GPUs>}}``; without SageMaker,
start them yourself:

  mpirun -np 2 python train_keras_horovod.py --train data/cifar10/train \
      --validation data/cifar10/validation --eval data/cifar10/eval \
      --sm-model-dir /tmp/model --output-data-dir /tmp/output --epochs 5
"""

import tensorflow as tf

# Horovod: imported after TensorFlow, so that TF 2.15 exits without errors (Horovod's cached
# tf.functions are then freed before TensorFlow's modules are); cifar.distributed has the helpers.
import horovod  # isort: skip
import horovod.tensorflow.keras as hvd  # isort: skip

from cifar import data, distributed, serving
from cifar import model as cnn
from cifar.checkpoints import EpochCheckpoints
from cifar.report import EpochTimer, TrainingLog
from cifar.sagemaker_args import parse_args
from cifar.stopping import SigtermStop

args = parse_args(__doc__)
# Horovod: ranks 0..size-1 over all hosts (local_rank counts within a host), one GPU each where
# there are GPUs. Rank 0 (not local_rank 0, one per host) logs and saves. All ranks stop at the
# same step when any got SIGTERM (an allreduce per step).
hvd.init()
distributed.pin_gpu(hvd.local_rank())
chief = hvd.rank() == 0
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
# Horovod: size x the batch, so size x the learning rate; the legacy optimizer for Horovod 0.27
# (TF 2.12 image); DistributedOptimizer averages the gradients over the ranks.
peak_lr = args.learning_rate * hvd.size()
optimizer = cnn.build_optimizer(peak_lr, total_steps=steps * args.epochs,
                                warmup_steps=steps * args.warmup_epochs,
                                momentum=args.momentum, weight_decay=args.weight_decay,
                                legacy=distributed.horovod_needs_legacy_optimizer(
                                    horovod.__version__))
optimizer = hvd.DistributedOptimizer(optimizer)
lookahead = cnn.Lookahead(model, steps, total_steps=steps * args.epochs)
model.compile(optimizer=optimizer, loss=cnn.loss_fn(args.label_smoothing),
              metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

# SageMaker: checkpoints go to /opt/ml/checkpoints (synced to checkpoint_s3_uri); a restarted
# job, e.g. after a spot interruption, resumes after the last finished epoch.
# Horovod: rank 0 writes the checkpoints.
checkpoints = EpochCheckpoints(args.checkpoint_dir, model, optimizer, enabled=chief)
epochs_done, history = checkpoints.restore()
# Horovod: rank 0's epoch count, weights and optimizer state (restored or new) go to all ranks,
# before the first step (hvd.callbacks.BroadcastGlobalVariablesCallback does it after it). Rank 0
# prints and writes the log.
epochs_done = int(hvd.broadcast(epochs_done, root_rank=0))
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

timer = EpochTimer()


def end_of_epoch(epoch, logs):
    if sigterm.stop:  # SageMaker: an epoch cut short by SIGTERM is not recorded
        return
    # Horovod: the learning rate read so that the legacy optimizer works too; images of all ranks.
    log.epoch(epoch + 1, logs["loss"], logs["accuracy"], logs["val_loss"], logs["val_accuracy"],
              cnn.current_learning_rate(optimizer), timer.seconds(),
              shard_records * hvd.size())
    checkpoints.save(epoch + 1, log.history)
    exports.after_epoch(epoch + 1)


epoch_end = tf.keras.callbacks.LambdaCallback(on_epoch_end=end_of_epoch)
# Horovod: after the timer and before epoch_end, the ranks average their batch-norm statistics
# (one model to validate) and their epoch logs.
horovod_callbacks = [distributed.AverageLocalStatistics(hvd.allreduce),
                     hvd.callbacks.MetricAverageCallback()]
model.fit(train, epochs=args.epochs, initial_epoch=epochs_done, validation_data=validation,
          verbose=0, callbacks=[timer, sigterm.keras_callback(), lookahead.keras_callback(),
                                *horovod_callbacks, epoch_end])

# SageMaker: after a SIGTERM (max_run, spot) the window is short: no eval, save, exit 0.
# Evaluated in float32, as exported, whatever precision trained it (cnn.float32_copy).
eval_loss, eval_accuracy = (None, None) if sigterm.stop else cnn.evaluate(
    cnn.float32_copy(model), evaluation, cnn.loss_fn(args.label_smoothing))
# SageMaker: everything in SM_MODEL_DIR becomes model.tar.gz; TF Serving loads <dir>/1/.
# Horovod: one model, from rank 0; the log records the scaled learning rate. Then every rank
# reports: equal weight fingerprints mean the ranks really are in sync.
if chief:
    serving.save_for_serving(model, args.sm_model_dir, epoch=len(log.history))
log.finish(eval_loss, eval_accuracy, stopped=sigterm.stop, peak_learning_rate=peak_lr,
           precision=precision)
print(distributed.rank_line(hvd.rank(), hvd.size(), shard_records, model), flush=True)
