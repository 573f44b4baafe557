"""A small stand-in for cifar-10-python.tar.gz, in the exact layout of the real archive.

Members: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta, readme.html}; each
batch a pickled dict with b"batch_label", b"labels", b"data" (N x 3072 uint8, channel-major as
in the real files) and b"filenames". Images carry a learnable class signal (a per-class colour
and a stripe orientation) under noise, so a few steps of training beat chance.
"""

import hashlib
import io
import pickle
import tarfile

import numpy as np

CLASS_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
               b"dog", b"frog", b"horse", b"ship", b"truck"]
BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch"]


def make_images(labels, rng):
    """uint8 images, shape (N, 32, 32, 3): class colour + class stripes + noise."""
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40],
                        [200, 40, 200], [40, 200, 200], [120, 120, 120], [230, 130, 30],
                        [30, 130, 230], [130, 30, 230]], dtype=np.float32)
    n = len(labels)
    images = palette[labels][:, None, None, :] * np.ones((n, 32, 32, 1), np.float32)
    stripes = (np.arange(32) // 4 % 2).astype(np.float32) * 50
    vertical = labels % 2 == 0
    images[vertical] += stripes[None, None, :, None]
    images[~vertical] += stripes[None, :, None, None]
    images += rng.normal(0, 40, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def make_batch(name, count, rng):
    labels = rng.integers(0, 10, size=count)
    images = make_images(labels, rng)
    data = images.transpose(0, 3, 1, 2).reshape(count, 3072)  # HWC -> CHW rows, as CIFAR
    return {b"batch_label": name.encode(), b"labels": [int(x) for x in labels],
            b"data": data, b"filenames": [f"{name}_{i}.png".encode() for i in range(count)]}


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def make_archive(path, per_batch=200, seed=0, extra_members=()):
    """Write the archive to ``path``; returns {"md5", "counts"}.

    extra_members: (name, bytes) pairs appended as-is, to build hostile archives.
    """
    rng = np.random.default_rng(seed)
    counts = {}
    with tarfile.open(path, "w:gz") as tar:
        meta = {b"label_names": CLASS_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name in BATCHES:
            batch = make_batch(name, per_batch, rng)
            counts[name] = per_batch
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html>synthetic CIFAR-10</html>")
        for name, payload in extra_members:
            _add(tar, name, payload)
    return {"md5": file_md5(path), "counts": counts}


def file_md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
