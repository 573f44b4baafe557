"""Save the trained model as a TF Serving SavedModel that takes raw uint8 images."""

import contextlib
import io
import os
import shutil

import tensorflow as tf

from .data import IMAGE_SHAPE

MODEL_VERSION = "1"  # TF Serving loads <model dir>/<version>/
# Serving needs no gradients; tracing them fails for a model whose optimizer is Horovod 0.27's
# legacy DistributedOptimizer (TF 2.12 image: "Mismatching ReplicaContext").
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def save_for_serving(model, model_dir):
    """Write ``model_dir/1`` with signature ``serving_default``: image -> probabilities, class_id.

    Written to a temporary folder and renamed, so a crash never leaves a half model.
    """
    final = os.path.join(model_dir, MODEL_VERSION)
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    signature = [tf.TensorSpec((None,) + IMAGE_SHAPE, tf.uint8, name="image")]
    # The same layers and weights without the optimizer and compiled train function, which
    # serving does not need and some cannot save (Horovod 0.27's DistributedOptimizer).
    model = tf.keras.Model(model.inputs, model.outputs, name=model.name)

    def serve(image):
        logits = model(image, training=False)
        return {"probabilities": tf.nn.softmax(logits),
                "class_id": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    if hasattr(tf.keras, "export"):  # Keras 2.12+ and Keras 3
        write_export_archive(model, serve, signature, partial)
    else:  # TF 2.11 (the SMDDP image): Keras 2 models save with tf.saved_model directly
        tf.saved_model.save(model, partial, options=SAVE_OPTIONS, signatures={
            "serving_default": tf.function(serve, input_signature=signature)})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    print(f"saved model: {final} (serving_default: uint8 image [n,32,32,3] -> probabilities, "
          "class_id)", flush=True)
    return final


def write_export_archive(model, serve, signature, path):
    archive = tf.keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=signature)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras lists every captured tensor
        archive.write_out(path, options=SAVE_OPTIONS)
