"""Train the workshop's CIFAR-10 CNN with Keras ``model.fit`` (notebooks 1.1, 1.2).

SageMaker runs this file as the entry point: hyperparameters arrive as ``--key value``, channels and
output folders as ``SM_*`` variables. Without SageMaker, pass the paths yourself:

  python train_keras.py --train data/cifar10/train --validation data/cifar10/validation \
      --eval data/cifar10/eval --sm-model-dir /tmp/model --output-data-dir /tmp/output --epochs 5
"""

import tensorflow as tf

from cifar import data, serving
from cifar import model as cnn
from cifar.checkpoints import EpochCheckpoints
from cifar.report import EpochTimer, TrainingLog
from cifar.sagemaker_args import parse_args
from cifar.stopping import SigtermStop

args = parse_args(__doc__)
sigterm = SigtermStop()  # SageMaker: SIGTERM at max_run or spot reclaim: stop after the step
tf.keras.utils.set_random_seed(args.seed)

train = data.make_dataset(args.train, args.batch_size, training=True, channel="train",
                          seed=args.seed)
validation = data.make_dataset(args.validation, args.batch_size, training=False,
                               channel="validation")
evaluation = data.make_dataset(args.eval, args.batch_size, training=False, channel="eval")
train_records = data.count_records(args.train, "train")
steps = data.steps_per_epoch(train_records, args.batch_size)

precision = cnn.choose_precision(args.precision)  # bfloat16 on CPUs with AMX
model = cnn.build_model(data.sample_images(args.train), precision=precision)
optimizer = cnn.build_optimizer(args.learning_rate, total_steps=steps * args.epochs,
                                warmup_steps=steps * args.warmup_epochs,
                                momentum=args.momentum, weight_decay=args.weight_decay)
lookahead = cnn.Lookahead(model, steps, total_steps=steps * args.epochs)
model.compile(optimizer=optimizer, loss=cnn.loss_fn(args.label_smoothing),
              metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

# SageMaker: checkpoints go to /opt/ml/checkpoints (synced to checkpoint_s3_uri); a restarted
# job, e.g. after a spot interruption, resumes after the last finished epoch.
checkpoints = EpochCheckpoints(args.checkpoint_dir, model, optimizer)
epochs_done, history = checkpoints.restore()
log = TrainingLog(args.output_data_dir, args.epochs, history)
# SageMaker: the platform does not pass SIGTERM on to this script: at max_run (or a spot
# reclaim) the container is killed and SM_MODEL_DIR uploaded as it is. Keep a recent model there.
exports = serving.PeriodicExport(model, args.sm_model_dir)
if epochs_done:
    log.say(f"resuming from checkpoint: epochs 1-{epochs_done} done")

timer = EpochTimer()


def end_of_epoch(epoch, logs):
    if sigterm.stop:  # SageMaker: an epoch cut short by SIGTERM is not recorded
        return
    log.epoch(epoch + 1, logs["loss"], logs["accuracy"], logs["val_loss"], logs["val_accuracy"],
              optimizer.learning_rate, timer.seconds(), train_records)
    checkpoints.save(epoch + 1, log.history)
    exports.after_epoch(epoch + 1)


epoch_end = tf.keras.callbacks.LambdaCallback(on_epoch_end=end_of_epoch)
model.fit(train, epochs=args.epochs, initial_epoch=epochs_done, validation_data=validation,
          verbose=0, callbacks=[timer, sigterm.keras_callback(), lookahead.keras_callback(),
                                epoch_end])

# SageMaker: after a SIGTERM (max_run, spot) the window is short: no eval, save, exit 0.
# Evaluated in float32, as exported, whatever precision trained it (cnn.float32_copy).
eval_loss, eval_accuracy = (None, None) if sigterm.stop else cnn.evaluate(
    cnn.float32_copy(model), evaluation, cnn.loss_fn(args.label_smoothing))
# SageMaker: everything in SM_MODEL_DIR becomes model.tar.gz; TF Serving loads <dir>/1/.
serving.save_for_serving(model, args.sm_model_dir, epoch=len(log.history))
log.finish(eval_loss, eval_accuracy, stopped=sigterm.stop, precision=precision)
