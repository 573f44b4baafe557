"""The workshop's CNN and its optimizer; the same code on Keras 2 (TF <= 2.15) and Keras 3.

Architecture: a fixed 2x2 patch-whitening layer fitted to the training images, then three blocks
of [Conv, MaxPool, BN, ReLU, Conv, BN, ReLU] at 64/128/192 filters (airbench's block,
KellerJordan/cifar10-airbench), a global max-pool and one Dense layer whose logits are scaled by
1/8 (the head of David Page's cifar10-fast). The model takes raw uint8 images and normalises them
itself, so the saved model serves raw pixels. At inference (``training`` off: validation,
evaluation and the exported model alike) it averages the logits of each image and its mirror.
Each choice's source is named where it is made; what each did here on real CIFAR-10 is in the
ablation table of issue 18's closing note, and README.md ("Accuracy on real CIFAR-10") gives the
result of benchmarks/accuracy.py.
"""

import numpy as np
import tensorflow as tf

from .data import IMAGE_SHAPE, NUM_CLASSES

keras = tf.keras

# Per-channel mean and standard deviation of the CIFAR-10 training images (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
WIDTHS = (64, 128, 192)
WHITENING_FILTERS = 24  # 2x2x3 = 12 whitened directions, each with both signs (ReLU keeps half)


def build_model(sample_images, widths=WIDTHS, flip_average=True):
    """The CNN; its first layer whitens 2x2 patches as measured on ``sample_images`` (uint8,
    [n, 32, 32, 3], a few thousand training images: data.sample_images).

    - Whitening first layer, frozen, and the first filters of each convolution starting as the
      identity (airbench's whitening and dirac inits; its ablation needs 21 and 18 epochs instead
      of 35 to 94%): here validation accuracy 0.64 instead of 0.47 after 3 epochs; after 15,
      the same without the flip average and +0.5 points with it.
    - Pooling right after each block's first convolution (airbench's order) runs the second
      convolution at a quarter of the pixels: the same seconds per epoch buy wider layers
      (64/128/192 beat 64/96/128 by 1.5 points).
    - No dropout and no Dense-512 head, as in cifar10-fast and airbench (not ablated here).
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Normalization(mean=CIFAR10_MEAN, variance=[s * s for s in CIFAR10_STD])(x)
    whitening = keras.layers.Conv2D(WHITENING_FILTERS, 2, use_bias=False, trainable=False,
                                    name="whitening")
    x = keras.layers.ReLU()(whitening(x))
    for filters in widths:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                kernel_initializer=PartialIdentity())(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.ReLU()(batch_norm(x))
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                kernel_initializer=PartialIdentity())(x)
        x = keras.layers.ReLU()(batch_norm(x))
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dense(NUM_CLASSES, use_bias=False)(x)
    logits = keras.layers.Rescaling(0.125, name="logits")(x)  # small logits early in training
    whitening.set_weights([patch_whitening(sample_images)])
    body = keras.Model(inputs, logits, name="cifar10_cnn_body")
    if not flip_average:
        return body
    return keras.Model(inputs, FlipAverage(body)(inputs), name="cifar10_cnn")


def batch_norm(x):
    """BatchNorm without a learned scale (airbench), momentum 0.9 (Keras defaults to 0.99) so the
    moving statistics settle within the first epoch."""
    return keras.layers.BatchNormalization(momentum=0.9, scale=False)(x)


def patch_whitening(images, eps=5e-4):
    """Filters (2, 2, 3, 24) that whiten the normalised 2x2 patches of ``images``: the
    eigenvectors of the patches' covariance over the square roots of their eigenvalues, with
    both signs. Deterministic for the same images, so every worker builds the same layer."""
    total, outer, count = np.zeros(12), np.zeros((12, 12)), 0
    for start in range(0, len(images), 500):  # 500 images of patches: 46 MB at a time
        x = (np.asarray(images[start:start + 500], np.float64) / 255 - CIFAR10_MEAN) / CIFAR10_STD
        patches = np.concatenate([x[:, i:i + 31, j:j + 31] for i in (0, 1) for j in (0, 1)],
                                 axis=-1).reshape(-1, 12)  # (row, col, channel) per patch
        total, outer = total + patches.sum(0), outer + patches.T @ patches
        count += len(patches)
    mean = total / count
    values, vectors = np.linalg.eigh(outer / count - np.outer(mean, mean))
    filters = (vectors / np.sqrt(values + eps)).T.reshape(12, 2, 2, 3)
    return np.concatenate([filters, -filters]).transpose(1, 2, 3, 0).astype("float32")


@keras.utils.register_keras_serializable(package="cifar")
class PartialIdentity(keras.initializers.Initializer):
    """Glorot-uniform filters, except the first min(inputs, outputs), which pass their own input
    channel through unchanged (dirac initialisation): a fresh network starts close to shallow."""

    def __call__(self, shape, dtype=None, **kwargs):
        height, width, inputs, outputs = shape
        random = keras.initializers.GlorotUniform()(shape, dtype=dtype)
        kept = min(inputs, outputs)
        centre = np.zeros((height, width, inputs, kept), "float32")
        centre[height // 2, width // 2] = np.eye(inputs, kept)
        return tf.concat([tf.cast(centre, random.dtype), random[..., kept:]], axis=-1)


@keras.utils.register_keras_serializable(package="cifar")
class FlipAverage(keras.layers.Layer):
    """Train on each image as it comes; at inference, average the logits of the image and of its
    mirror image (test-time augmentation with the flip that training already uses): +0.5 to +1.0
    points of validation accuracy here, for twice the compute per served image. Inside the
    model, so the exported model serves exactly the accuracy that evaluation reports."""

    def __init__(self, body, **kwargs):
        super().__init__(**kwargs)
        self.body = body

    def call(self, images, training=None):
        logits = self.body(images, training=training)
        if training:
            return logits
        return 0.5 * (logits + self.body(tf.reverse(images, axis=[2]), training=False))


# Registered so optimizers can be rebuilt from their config (Horovod's DistributedOptimizer does).
@keras.utils.register_keras_serializable(package="cifar")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``
    (cifar10-fast's schedule). Warm-up matters most for distributed runs, where ``peak`` is scaled
    by the worker count."""

    def __init__(self, peak, total_steps, warmup_steps):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * (1.0 - tf.clip_by_value(progress, 0.0, 1.0))
        return tf.where(step < self.warmup_steps, warm, decay)

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
