"""The workshop's CNN and its optimizer; the same code on Keras 2 (TF <= 2.15) and Keras 3.

Architecture: a fixed 2x2 patch-whitening layer fitted to the training images, then three blocks
of [Conv, MaxPool, BN, ReLU, Conv, BN, ReLU] at 64/256/256 filters (airbench94's block and
widths, KellerJordan/cifar10-airbench), a global max-pool and one Dense layer whose logits are
scaled by 1/8 (the head of David Page's cifar10-fast). The model takes raw uint8 images and
normalises them itself, so the saved model serves raw pixels. At inference (``training`` off:
validation, evaluation and the exported model alike) it averages the logits of six views of each
image: the image, its mirror and both shifted by a pixel (airbench's test-time augmentation).
Training averages the weights as it goes (airbench's Lookahead). On CPUs with AMX it trains in
bfloat16 (choose_precision) and is evaluated and exported in float32 (float32_copy).
Each choice's source is named where it is made; what each did here on real CIFAR-10 is in the
ablation table of issue 18's closing note, and README.md ("Accuracy on real CIFAR-10") gives the
result of benchmarks/accuracy.py.
"""

import contextlib

import numpy as np
import tensorflow as tf

from .data import IMAGE_SHAPE, NUM_CLASSES

keras = tf.keras

# Per-channel mean and standard deviation of the CIFAR-10 training images (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# airbench94's widths: 2.4x the multiply-adds of the last recipe's 48/128/192, which bfloat16 on
# AMX pays for (an epoch here took 0.79x the previous recipe's in float32: README, "Accuracy on
# real CIFAR-10"); validation 0.8965 against 0.8858 after 15 epochs (issue 18's ablation).
WIDTHS = (64, 256, 256)
WHITENING_FILTERS = 24  # 2x2x3 = 12 whitened directions, each with both signs (ReLU keeps half)


def choose_precision(requested="auto"):
    """The Keras dtype policy to train in: ``requested`` itself, or for "auto" mixed_bfloat16 on
    a CPU with AMX (Intel's bfloat16 matrix units, /proc/cpuinfo flag amx_bf16) and no GPU,
    float32 elsewhere. Here (AMX, 2 cores) a training step of the recipe's model took 3.7x less
    time in bfloat16 (benchmarks/precision.py). Without AMX (CPUs without bfloat16 matrix
    units) and on GPUs, bfloat16 is not measured here, so ``auto`` keeps float32 there."""
    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    try:
        with open("/proc/cpuinfo") as f:
            amx = any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:  # not Linux
        amx = False
    return "mixed_bfloat16" if amx else "float32"


def build_model(sample_images, widths=WIDTHS, test_time_augmentation=True, precision="auto"):
    """The CNN; its first layer whitens 2x2 patches as measured on ``sample_images`` (uint8,
    [n, 32, 32, 3], a few thousand training images: data.sample_images).

    ``precision``: the layers' dtype policy (choose_precision). Under mixed_bfloat16 the
    weights stay float32 and the logits are float32; float32_copy gives the same model in
    float32 for evaluation and export.

    - Whitening first layer, frozen, and the first filters of each convolution starting as the
      identity (airbench's whitening and dirac inits; its ablation needs 21 and 18 epochs instead
      of 35 to 94%): here validation accuracy 0.64 instead of 0.47 after 3 epochs; after 15,
      the same without the mirror average and +0.5 points with it.
    - Pooling right after each block's first convolution (airbench's order) runs the second
      convolution at a quarter of the pixels: the same seconds per epoch buy wider layers
      (64/128/192 beat 64/96/128 by 1.5 points).
    - No dropout and no Dense-512 head, as in cifar10-fast and airbench (not ablated here).
    - Widths (see WIDTHS): 64/256/256 reached validation 0.8965 after 15 epochs against
      0.8858 for 48/128/192; shifts of 4 px instead of 2 did not help them (0.8932).
    """
    with dtype_policy(choose_precision(precision)):  # float32 weights, bfloat16 maths
        inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
        x = keras.layers.Rescaling(1.0 / 255)(inputs)
        x = keras.layers.Normalization(mean=CIFAR10_MEAN,
                                       variance=[s * s for s in CIFAR10_STD])(x)
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
        # Small logits early in training; float32 whatever the policy (the softmax and the loss).
        logits = keras.layers.Rescaling(0.125, name="logits", dtype="float32")(x)
        whitening.set_weights([patch_whitening(sample_images)])
        body = keras.Model(inputs, logits, name="cifar10_cnn_body")
        if not test_time_augmentation:
            return body
        views = TestTimeAugmentation(body, dtype="float32")
        return keras.Model(inputs, views(inputs), name="cifar10_cnn")


@contextlib.contextmanager
def dtype_policy(name):
    """Keras' global dtype policy set to ``name`` while layers are built, then restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _body(model):
    """The single-pass network inside ``model`` (the model itself without test-time views)."""
    views = model.layers[-1]
    return views.body if isinstance(views, TestTimeAugmentation) else model


def computes_in_float32(model):
    return all(layer.compute_dtype == "float32" for layer in _body(model).layers
               if layer.weights)


def float32_copy(model):
    """The same network and weights computing in float32, without optimizer or compiled
    functions: what evaluation measures and serving exports, so the served model runs on any
    CPU and serves the accuracy that evaluation reports, whatever precision trained it."""
    body = _body(model)
    convolutions = [layer.filters for layer in body.layers
                    if isinstance(layer, keras.layers.Conv2D) and layer.name != "whitening"]
    copy = build_model(np.zeros((1,) + IMAGE_SHAPE, np.uint8), tuple(convolutions[::2]),
                       test_time_augmentation=body is not model, precision="float32")
    copy.set_weights(model.get_weights())
    return copy


def evaluate(model, dataset, loss):
    """Mean loss and accuracy of ``model`` (inference: its test-time views) over ``dataset``,
    exact over the split; ``loss`` gives one loss per example (loss_fn)."""
    @tf.function
    def batch(images, labels):
        logits = model(images, training=False)
        hits = tf.equal(tf.argmax(logits, axis=-1), tf.cast(tf.reshape(labels, [-1]), tf.int64))
        return tf.reduce_sum(loss(labels, logits)), tf.reduce_sum(tf.cast(hits, tf.float32))

    total_loss = correct = count = 0.0
    for images, labels in dataset:
        batch_loss, batch_correct = batch(images, labels)
        total_loss, correct = total_loss + float(batch_loss), correct + float(batch_correct)
        count += int(tf.shape(labels)[0])
    return total_loss / count, correct / count


def batch_norm(x):
    """BatchNorm without a learned scale (airbench), momentum 0.6 (airbench's; Keras defaults to
    0.99): the moving statistics follow the last few batches, so they match the weights that
    Lookahead has just averaged."""
    return keras.layers.BatchNormalization(momentum=0.6, scale=False)(x)


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
class TestTimeAugmentation(keras.layers.Layer):
    """Train on each image as it comes; at inference, average the logits of six views (airbench's
    test-time augmentation): the image and its mirror with weight 1/2, and both shifted by one
    pixel up-left and down-right (edges reflected) with 1/4 each. Inside the model, so the
    exported model serves exactly the accuracy that evaluation reports, at 6x the compute."""

    def __init__(self, body, **kwargs):
        super().__init__(**kwargs)
        self.body = body

    def _mirrored(self, images):
        return 0.5 * (self.body(images, training=False)
                      + self.body(tf.reverse(images, axis=[2]), training=False))

    def call(self, images, training=None):
        if training:
            return self.body(images, training=training)
        padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        shifted = self._mirrored(padded[:, :-2, :-2]) + self._mirrored(padded[:, 2:, 2:])
        return 0.5 * self._mirrored(images) + 0.25 * shifted


# Registered so optimizers can be rebuilt from their config (Horovod's DistributedOptimizer does).
@keras.utils.register_keras_serializable(package="cifar")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from ``start`` x ``peak`` up to ``peak`` over ``warmup_steps``, then linear down to
    ``end`` x ``peak`` at ``total_steps`` (airbench's triangle: start 0.2, end 0.07, where
    Lookahead's average takes over from the last steps). Warm-up matters most for distributed
    runs, where ``peak`` is scaled by the worker count."""

    def __init__(self, peak, total_steps, warmup_steps, start=0.0, end=0.0):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 1)
        self.start, self.end = float(start), float(end)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.start + (1.0 - self.start) * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        decay = 1.0 - (1.0 - self.end) * tf.clip_by_value(progress, 0.0, 1.0)
        return self.peak * tf.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "start": self.start, "end": self.end}


def build_optimizer(learning_rate, total_steps, warmup_steps, momentum, weight_decay,
                    legacy=False):
    """SGD with Nesterov momentum, decoupled weight decay and the one-cycle schedule.

    Warm-up takes at most a quarter of training, so that short runs still anneal. No defaults
    here: the recipe's values are the flags' (sagemaker_args.RECIPE_DEFAULTS).
    ``legacy``: a ``tf.keras.optimizers.legacy`` SGD with the same decoupled weight decay, for
    Horovod < 0.28, whose DistributedOptimizer accepts nothing else on Keras 2.11 and later
    (the TF 2.12 training image has Horovod 0.27.0). Keras 2 only.
    """
    schedule = OneCycle(learning_rate, total_steps, min(warmup_steps, total_steps / 4),
                        start=0.2, end=0.07)
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


class Lookahead:
    """airbench's weight averaging (its "Lookahead"), from epoch ``start_epoch`` on: every
    ``every`` steps a slow copy of the trainable weights and of batch norm's moving statistics
    moves toward them by (1 - rho), and they jump to the slow copy; rho = decay**every *
    (step / total_steps)**3 grows toward the end, when the average matters most. At each epoch's
    end the weights are set to the slow copy, so a checkpoint holds all of its state (a resumed
    run starts its slow copy from the weights). Call ``after_step`` after every optimizer step
    and ``end_of_epoch`` before validation; on every worker alike (their weights are identical,
    so are their slow copies; statistics differ by worker until the distributed scripts average
    them, after ``end_of_epoch``). With the triangle schedule, BN momentum 0.6 and 2-px shifts:
    validation 0.856 instead of 0.815 after 8 of 15 epochs here. The statistics are averaged
    too, as airbench's LookaheadState averages the network's whole state, so that they belong
    to the weights they normalise; with whole batches (data.steps_per_epoch) two runs gave
    validation 0.8987 and 0.8998, eval 0.8992 and 0.8931 after 15 epochs, against 0.8965-0.8989
    and 0.8917-0.8940 without either: within the runs' spread (issue 18).
    """

    def __init__(self, model, steps_per_epoch, total_steps, start_epoch=3, every=5, decay=0.95):
        norms = [layer for layer in _body(model).layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
        self.weights = model.trainable_weights + [
            weight for layer in norms for weight in layer.non_trainable_weights]
        self.slow = [tf.Variable(w, trainable=False) for w in self.weights]
        self.start, self.every = int(start_epoch * steps_per_epoch), every
        self.total, self.base = max(int(total_steps), 1), decay ** every
        self.started = False

    def after_step(self, step):
        step = int(tf.convert_to_tensor(step))  # an int, or a (mirrored) variable
        if step < self.start or step % self.every:
            return
        if not self.started:
            self.started = True
            self._copy(self.weights, self.slow)
            return
        self._average(tf.constant(self.base * (step / self.total) ** 3, tf.float32))

    def end_of_epoch(self):
        if self.started:
            self._copy(self.slow, self.weights)

    @tf.function
    def _average(self, rho):
        for slow, weight in zip(self.slow, self.weights):
            slow.assign(rho * slow + (1 - rho) * weight)
            weight.assign(slow)

    @staticmethod
    def _copy(sources, targets):
        # Eager, twice an epoch at most: a tf.function would take Keras 3's variables as
        # arguments and see tensors, which have no assign (it crashed at epoch 4, its first).
        for source, target in zip(sources, targets):
            target.assign(source)

    def keras_callback(self):
        """For ``model.fit``: ``after_step`` after each batch, ``end_of_epoch`` as validation
        begins (Keras validates before it calls ``on_epoch_end``)."""
        return _LookaheadCallback(self)


class _LookaheadCallback(keras.callbacks.Callback):
    def __init__(self, lookahead):
        super().__init__()
        self.lookahead = lookahead

    def on_train_batch_end(self, batch, logs=None):
        self.lookahead.after_step(self.model.optimizer.iterations)

    def on_test_begin(self, logs=None):
        self.lookahead.end_of_epoch()


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
