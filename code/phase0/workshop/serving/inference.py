"""Load a trained model the way TF Serving would (SavedModel signature) and predict."""

import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np


def unpack_model(artifact, target_dir=None):
    """``model.tar.gz`` (or a folder) -> the SavedModel folder ``<...>/1``, safely extracted."""
    artifact = Path(artifact)
    if artifact.is_dir():
        root = artifact
    else:
        root = Path(target_dir or tempfile.mkdtemp(prefix="model-"))
        with tarfile.open(artifact) as tar:
            tar.extractall(root, filter="data")  # refuses absolute paths, links out, devices
    versions = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise FileNotFoundError(f"no SavedModel version folder (1/) in {artifact}")
    return versions[-1]


def exported_epoch(artifact):
    """The last finished epoch of the model in ``model.tar.gz`` (what the entry point wrote to
    ``1/assets.extra/export.json`` when it exported it), or None."""
    try:
        with tarfile.open(artifact) as tar:
            with tar.extractfile("1/assets.extra/export.json") as f:
                return json.load(f).get("epoch")
    except (KeyError, OSError, tarfile.TarError, ValueError):
        return None


def load_signature(artifact):
    """The ``serving_default`` signature of a model artifact: uint8 images -> dict of outputs.

    A ``model.tar.gz`` is extracted into a temporary folder that is gone when this returns: the
    loaded model holds its variables in memory (the workshop's model has no asset files)."""
    import tensorflow as tf

    if Path(artifact).is_dir():
        return tf.saved_model.load(os.fspath(unpack_model(artifact))).signatures["serving_default"]
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        loaded = tf.saved_model.load(os.fspath(unpack_model(artifact, folder)))
    return loaded.signatures["serving_default"]


def predict_classes(signature, images, batch_size=500):
    """Class ids for uint8 images (N, 32, 32, 3), batched."""
    import tensorflow as tf

    outputs = [signature(image=tf.constant(images[i:i + batch_size]))["class_id"].numpy()
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros(0, np.int32)
