"""Save the trained model as a TF Serving SavedModel that takes raw uint8 images."""

import contextlib
import ctypes
import io
import json
import os
import shutil
import time

import tensorflow as tf

from . import model as cnn
from .data import IMAGE_SHAPE

MODEL_VERSION = "1"  # TF Serving loads <model dir>/<version>/
# Serving needs no gradients; tracing them fails for a model whose optimizer is Horovod 0.27's
# legacy DistributedOptimizer (TF 2.12 image: "Mismatching ReplicaContext").
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)


EXPORT_INFO = "export.json"  # in <version>/assets.extra/, which TF Serving does not load


def save_for_serving(model, model_dir, epoch=None, quiet=False):
    """Write ``model_dir/1`` with signature ``serving_default``: image -> probabilities, class_id.

    Written to a hidden folder beside it and swapped into place, so ``1/`` is a whole model at
    every instant, even if the process is killed while saving (TF Serving and the SageMaker
    container load only numbered folders). ``epoch``: the last finished epoch, recorded in
    ``1/assets.extra/export.json``.
    """
    final = os.path.join(model_dir, MODEL_VERSION)
    partial = os.path.join(model_dir, f".{MODEL_VERSION}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    signature = [tf.TensorSpec((None,) + IMAGE_SHAPE, tf.uint8, name="image")]
    # The same layers and weights without the optimizer and compiled train function, which
    # serving does not need and some cannot save (Horovod 0.27's DistributedOptimizer); in
    # float32 if it trained in bfloat16, so that it serves on any CPU.
    model = tf.keras.Model(model.inputs, model.outputs, name=model.name) \
        if cnn.computes_in_float32(model) else cnn.float32_copy(model)

    def serve(image):
        logits = model(image, training=False)
        return {"probabilities": tf.nn.softmax(logits),
                "class_id": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    if hasattr(tf.keras, "export"):  # Keras 2.12+ and Keras 3
        write_export_archive(model, serve, signature, partial)
    else:  # TF 2.11 (the SMDDP image): tf.saved_model directly, of a module that holds only
        # the weights and the function; saving the Keras model itself traced every layer again.
        module = tf.Module()
        module.weights = model.weights
        module.serve = tf.function(serve, input_signature=signature)
        tf.saved_model.save(module, partial, options=SAVE_OPTIONS,
                            signatures={"serving_default": module.serve})
    os.makedirs(os.path.join(partial, "assets.extra"), exist_ok=True)
    with open(os.path.join(partial, "assets.extra", EXPORT_INFO), "w") as f:
        json.dump({"epoch": epoch}, f)
    swap_into_place(partial, final)
    if not quiet:
        print(f"saved model: {final} (serving_default: uint8 image [n,32,32,3] -> probabilities, "
              "class_id)", flush=True)
    return final


def swap_into_place(partial, final):
    """Replace the folder ``final`` by ``partial``: with Linux's renameat2(RENAME_EXCHANGE) in one
    step; where the file system lacks it, by two renames (a kill between them leaves no model)."""
    if not os.path.exists(final):
        os.replace(partial, final)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    at_cwd, rename_exchange = -100, 2
    if exchange is None or exchange(at_cwd, os.fsencode(partial), at_cwd, os.fsencode(final),
                                    rename_exchange) != 0:
        old = partial + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        partial = old
    shutil.rmtree(partial, ignore_errors=True)  # the previous model


class PeriodicExport:
    """Export the model into the model folder after an epoch when the last export is old.

    SageMaker's training toolkit does not pass SIGTERM on to the entry point (sagemaker-
    training-toolkit#125): at max_run, or when spot capacity is reclaimed, the container is killed
    and ``/opt/ml/model`` is uploaded as it is. So the chief keeps a recent model there: after
    epoch 1, then whenever the last export is ``interval`` seconds old, where ``interval`` is at
    least ``min_interval`` and ``1 / share`` times what the last export took (exporting costs at
    most ``share`` of the training time).
    agree: for MultiWorkerMirroredStrategy, where every worker must join each save: the sum of a
    value over all workers (``stopping.mwms_agreement``), so that all follow the chief's clock.
    """

    def __init__(self, model, model_dir, chief=True, agree=None, min_interval=60.0, share=0.05):
        self.model, self.model_dir, self.chief, self.agree = model, model_dir, chief, agree
        self.min_interval, self.share = min_interval, share
        self.interval, self.last = min_interval, None

    def due(self):
        return self.chief and (self.last is None
                               or time.monotonic() - self.last >= self.interval)

    def after_epoch(self, epoch):
        due = self.due()
        if self.agree is not None:  # every worker exports, or none
            due = float(self.agree(tf.constant(float(due)))) > 0
        if not due or not self.model_dir:
            return
        started = time.monotonic()
        save_for_serving(self.model, self.model_dir, epoch=epoch, quiet=True)
        seconds = time.monotonic() - started
        self.last, self.interval = time.monotonic(), max(self.min_interval, seconds / self.share)
        if self.chief:
            print(f"exported the model of epoch {epoch} in {seconds:.1f}s (next export after "
                  f"{self.interval:.0f}s of training)", flush=True)


def write_export_archive(model, serve, signature, path):
    archive = tf.keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=signature)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras lists every captured tensor
        archive.write_out(path, options=SAVE_OPTIONS)
