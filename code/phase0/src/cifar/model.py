"""The workshop's CNN and its optimizer; the same code on Keras 2 (TF <= 2.15) and Keras 3.

Architecture (the original workshop's): three blocks of [Conv-BN-ReLU x2, MaxPool, Dropout]
with 32/64/128 filters, Dense(512), Dropout, Dense(10). The model takes raw uint8 images and
normalises them itself, so the saved model serves raw pixels.
"""

import math

import tensorflow as tf

from .data import IMAGE_SHAPE, NUM_CLASSES

keras = tf.keras

# Per-channel mean and standard deviation of the CIFAR-10 training images (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def build_model(dropout=(0.1, 0.1, 0.2), dense_dropout=0.3, width=32):
    """The CNN, with normalisation inside.

    BatchNorm momentum 0.9 (Keras defaults to 0.99) lets the moving statistics settle within
    the first few hundred steps, so validation is meaningful from the first epochs.
    Dropout is lighter than the original's 0.2/0.3/0.4 + 0.5: with crop/flip augmentation
    already regularising, the original rates cost accuracy in a 20-epoch budget.
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Normalization(mean=CIFAR10_MEAN, variance=[s * s for s in CIFAR10_STD])(x)
    for block, rate in enumerate(dropout):
        filters = width * 2 ** block
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(rate)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dropout(dense_dropout)(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="cifar10_cnn")


# Registered so optimizers can be rebuilt from their config (Horovod's DistributedOptimizer does).
@keras.utils.register_keras_serializable(package="cifar")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Warm-up matters most for distributed runs, where ``peak`` is scaled by the worker count.
    """

    def __init__(self, peak, total_steps, warmup_steps):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def build_optimizer(learning_rate, total_steps, warmup_steps, momentum, weight_decay,
                    legacy=False):
    """SGD with Nesterov momentum, decoupled weight decay and the one-cycle schedule.

    Warm-up takes at most a fifth of training, so that short runs still anneal. No defaults
    here: the recipe's values are the flags' (sagemaker_args.RECIPE_DEFAULTS).
    ``legacy``: a ``tf.keras.optimizers.legacy`` SGD with the same decoupled weight decay, for
    Horovod < 0.28, whose DistributedOptimizer accepts nothing else on Keras 2.11 and later
    (the TF 2.12 training image has Horovod 0.27.0). Keras 2 only.
    """
    schedule = OneCycle(learning_rate, total_steps, min(warmup_steps, total_steps / 5))
    if legacy:
        return _legacy_sgdw(schedule, momentum, weight_decay)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay)


def _legacy_sgdw(schedule, momentum, weight_decay):
    """Legacy SGD plus Keras' decoupled decay (``w -= lr * weight_decay * w``, then the update)."""

    class SGDW(keras.optimizers.legacy.SGD):
        def _resource_apply_dense(self, grad, var, apply_state=None):
            lr = self._decayed_lr(var.dtype.base_dtype)
            with tf.control_dependencies([var.assign_sub(var * lr * weight_decay)]):
                return super()._resource_apply_dense(grad, var, apply_state)

    return SGDW(learning_rate=schedule, momentum=momentum, nesterov=True)


def build_optimizer_state(optimizer, variables):
    """Create the optimizer's slots now and return all of its variables.

    Keras 3 and the legacy optimizers create slots lazily, at the first step; distributed
    scripts broadcast them and checkpoints restore them before that. On Keras 2.11
    ``optimizer.variables`` is a method, from 2.12 on a property.
    """
    if hasattr(optimizer, "build"):
        optimizer.build(variables)
    else:  # a legacy optimizer
        optimizer._create_all_weights(variables)
    state = optimizer.variables
    return list(state() if callable(state) else state)


def current_learning_rate(optimizer):
    """The learning rate of the next step as a float (a legacy optimizer returns its schedule)."""
    rate = optimizer.learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(tf.convert_to_tensor(rate))


def loss_fn(label_smoothing):
    """Per-example cross-entropy on logits with label smoothing; labels are class ids.

    Returns one loss per example: ``model.compile`` averages them, custom loops average
    over the global batch themselves.
    """
    def loss(labels, logits):
        targets = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), NUM_CLASSES)
        return keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=label_smoothing)

    return loss
