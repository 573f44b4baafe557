"""Train the workshop's CIFAR-10 CNN with a TF2 custom loop: tf.GradientTape in a tf.function (2.1).

The same model, data and SageMaker contract as train_keras.py; the loop is written out so that the
distributed variants (train_tf_horovod.py, train_tf_ddp.py, train_tf_mwms.py) can show exactly what
distribution adds. Without SageMaker, pass the paths yourself:

  python train_tf.py --train data/cifar10/train --validation data/cifar10/validation \
      --eval data/cifar10/eval --sm-model-dir /tmp/model --output-data-dir /tmp/output --epochs 5
"""

import time

import tensorflow as tf

from cifar import data, serving
from cifar import model as cnn
from cifar.checkpoints import EpochCheckpoints
from cifar.report import TrainingLog
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
loss_fn = cnn.loss_fn(args.label_smoothing)
mean_loss = tf.keras.metrics.Mean()
accuracy = tf.keras.metrics.SparseCategoricalAccuracy()


@tf.function
def train_step(images, labels):
    with tf.GradientTape() as tape:
        logits = model(images, training=True)  # batch statistics, no test-time views
        loss = tf.reduce_mean(loss_fn(labels, logits))
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
    result = float(mean_loss.result()), float(accuracy.result())
    mean_loss.reset_state()
    accuracy.reset_state()
    return result


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

for epoch in range(epochs_done + 1, args.epochs + 1):
    start = time.time()
    train_loss, train_accuracy = run_epoch(train, train_step, sigterm, lookahead)
    seconds = time.time() - start
    if sigterm.stop:  # SageMaker: cut short: no validation, no checkpoint of this epoch
        break
    val_loss, val_accuracy = run_epoch(validation, test_step)
    log.epoch(epoch, train_loss, train_accuracy, val_loss, val_accuracy,
              optimizer.learning_rate, seconds, train_records)
    checkpoints.save(epoch, log.history)
    exports.after_epoch(epoch)

# SageMaker: after a SIGTERM (max_run, spot) the window is short: no eval, save, exit 0.
# Evaluated in float32, as exported, whatever precision trained it (cnn.float32_copy).
eval_loss, eval_accuracy = (None, None) if sigterm.stop else cnn.evaluate(
    cnn.float32_copy(model), evaluation, loss_fn)
# SageMaker: everything in SM_MODEL_DIR becomes model.tar.gz; TF Serving loads <dir>/1/.
serving.save_for_serving(model, args.sm_model_dir, epoch=len(log.history))
log.finish(eval_loss, eval_accuracy, stopped=sigterm.stop, precision=precision)
