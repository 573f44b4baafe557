"""CIFAR-10: download, verify, extract safely, convert to TFRecords, count, upload.

Layout written under ``data_dir``::

    download/cifar-10-python.tar.gz        the verified archive (reused by reruns)
    {train,validation,eval}/<split>-0000i-of-0000N.tfrecord
    {train,validation,eval}/manifest.json  {"split", "records", "shards"}: read by src/cifar/data.py
    manifest.json                          written last: its presence means "complete"
    s3_channels.json                       host mode only: where the splits were uploaded

Records: tf.train.Example with ``image`` (3,072 bytes, 32x32x3 uint8 height-width-channel)
and ``label`` (int64, 0..9). Shards hold consecutive records, so reading the shards in name
order gives the source order.
"""

import hashlib
import itertools
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from . import DEFAULT_DATA_DIR, resolve
from .files import write_json_atomic

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
SPLITS = {
    "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"],
    "validation": ["data_batch_5"],
    "eval": ["test_batch"],
}
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
MANIFEST_NAME = "manifest.json"
CHANNELS_NAME = "s3_channels.json"
CONNECT_TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20
MAX_EXTRACT_BYTES = 1 << 30  # the real archive unpacks to ~180 MB; more is not CIFAR-10
TMP_PREFIX = ".tmp-"  # leftovers of an interrupted run, removed by the next one

MIRROR_HINT = ("set CIFAR10_URL / CIFAR10_MD5 (or the notebook parameters) to a mirror and "
               "its checksum")
RECORD_FORMAT = {
    "record": "tf.train.Example",
    "image": "bytes: 3,072 uint8, 32x32x3 height-width-channel",
    "label": "int64: 0..9, index into CLASS_NAMES",
    "order": "source order; shards hold consecutive records",
}


class DatasetError(RuntimeError):
    """Getting or converting CIFAR-10 failed; the message names the cause and the fix."""


# --- source -----------------------------------------------------------------------------

def resolve_source(url=None, md5=None):
    """(url, md5): explicit argument > CIFAR10_URL / CIFAR10_MD5 environment > official."""
    url = (url or os.environ.get("CIFAR10_URL") or "").strip() or CIFAR10_URL
    md5 = (md5 or os.environ.get("CIFAR10_MD5") or "").strip()
    if not md5:
        if url != CIFAR10_URL:  # the official checksum says nothing about another file
            raise DatasetError(
                f"CIFAR-10 source {url} has no checksum: a mirror needs its own MD5. "
                f"Set CIFAR10_MD5 (or the notebook parameter) to the MD5 of that file.")
        md5 = CIFAR10_MD5
    return url, _check_md5(md5)


def _check_md5(md5):
    md5 = md5.strip().lower()
    if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
        raise DatasetError(f"{md5!r} is not an MD5 (32 hex digits): fix CIFAR10_MD5.")
    return md5


# --- download ---------------------------------------------------------------------------

def download(url, md5, dest_dir, progress=True):
    """Path of ``dest_dir/cifar-10-python.tar.gz`` with the given MD5, downloaded if needed.

    The bytes go to a temp file that is renamed only after its size and MD5 are right, so a
    file under the final name is always a verified one; failures leave nothing behind.
    """
    md5 = _check_md5(md5)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / ARCHIVE_NAME
    if final.is_file() and file_digest(final, "md5") == md5:
        return final
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + ARCHIVE_NAME, dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _fetch(url, out, final, progress)
        if got != md5:
            raise DatasetError(
                f"checksum mismatch for {url}: expected MD5 {md5}, got {got}. The file is "
                f"corrupt or not the expected one; nothing was kept. To use another copy, "
                f"{MIRROR_HINT}.")
        tmp.chmod(0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _fetch(url, out, final, progress):
    """Stream ``url`` into ``out``; returns the MD5 of what was received."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        response, total = _open_http(url, final)
    elif scheme == "file" or len(scheme) <= 1:  # "" or a Windows drive letter: a local path
        response, total = _open_local(url, final)
    else:
        raise DatasetError(f"cannot download {url}: only http(s)://, file:// and local paths "
                           f"are supported. Fetch it yourself and pass the local path.")
    with response:
        received, digest = _copy(response, out, total, url, progress)
    if total is not None and received != total:
        raise DatasetError(
            f"download of {url} was truncated: got {received:,} of {total:,} bytes. "
            f"Rerun to retry; if it keeps failing, {MIRROR_HINT}.")
    return digest


def _open_http(url, final):
    offline_hint = (f"check the network/proxy, or {MIRROR_HINT}, or copy the archive to "
                    f"{final} (used if its MD5 matches)")
    try:
        response = urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        raise DatasetError(
            f"{url} answered HTTP {err.code} {err.reason}: {offline_hint}.") from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DatasetError(f"could not reach {url} ({reason}): {offline_hint}.") from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _open_local(url, final):
    parsed = urllib.parse.urlparse(url)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else url)
    try:
        return open(path, "rb"), path.stat().st_size
    except OSError as err:
        raise DatasetError(f"local CIFAR-10 archive {path} cannot be read ({err.strerror}): "
                           f"fix the path, or {MIRROR_HINT}.") from None


def _copy(response, out, total, url, progress):
    digest, received = hashlib.md5(), 0
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=ARCHIVE_NAME,
               disable=not progress, leave=False)
    try:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except (OSError, HTTPException) as err:  # reset, timeout, IncompleteRead
        raise DatasetError(
            f"download of {url} was cut after {received:,} bytes ({err!r}). "
            f"Rerun to retry; if it keeps failing, {MIRROR_HINT}.") from None
    finally:
        bar.close()
    return received, digest.hexdigest()


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# --- extract ----------------------------------------------------------------------------

def safe_extract(archive, target_dir):
    """Extract the ``cifar-10-batches-py/`` files of ``archive``; returns that folder.

    Only regular files and folders with plain relative names are accepted: links, devices,
    absolute names and ``..`` raise before anything is written. Extraction goes to a temp
    folder that is renamed into place, so a failure leaves no partial folder.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "extract-", dir=target_dir))
    try:
        _extract_members(archive, tmp)
        if not (tmp / BATCHES_DIR).is_dir():
            raise DatasetError(f"{archive} has no {BATCHES_DIR}/ folder: it is not the CIFAR-10 "
                               f"python archive. Delete it and {MIRROR_HINT}.")
        final = target_dir / BATCHES_DIR
        _replace_dir(tmp / BATCHES_DIR, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_members(archive, into):
    written = 0
    try:
        with tarfile.open(archive, "r|gz") as tar:  # streamed: one pass over the gzip
            for member in tar:
                relative = _checked_name(member, archive)
                if relative.parts[0] != BATCHES_DIR:
                    continue
                written += member.size
                if written > MAX_EXTRACT_BYTES:
                    raise DatasetError(f"{archive} unpacks to over {MAX_EXTRACT_BYTES:,} bytes: "
                                       f"not CIFAR-10. Delete it and download again.")
                _write_member(tar, member, into / relative)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(f"{archive} is truncated or corrupt ({err}). Delete it and run "
                           f"again to download a fresh copy.") from None


def _checked_name(member, archive):
    """The member's relative path, or DatasetError if it could write outside the target."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name or not name.parts:
        raise DatasetError(f"refusing to extract {archive}: member {member.name!r} has an "
                           f"unsafe path. The archive is not genuine CIFAR-10; delete it.")
    if not (member.isreg() or member.isdir()):
        raise DatasetError(f"refusing to extract {archive}: member {member.name!r} is a link or "
                           f"device, not a file. The archive is not genuine CIFAR-10; delete it.")
    return name


def _write_member(tar, member, dest):
    if member.isdir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_BYTES)


def _replace_dir(new, final):
    """Put folder ``new`` at ``final``, swapping out any old one (renames, same filesystem)."""
    new.chmod(0o755)  # mkdtemp makes 0700 folders
    aside = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, aside)
    os.replace(new, final)
    shutil.rmtree(aside, ignore_errors=True)


# --- read the python pickles ------------------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),  # numpy arrays, as written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"),  # ... and by numpy 2.x
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 3
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else: a pickle can run any callable
    it names, so a tampered batch file must not reach the default ``find_class``."""

    def __init__(self, file, source):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name} from {self.source}: CIFAR-10 "
                           f"batches hold only numpy arrays and lists. Delete the archive and "
                           f"download it again from a trusted source.")


def load_batch(path):
    """(images uint8 (N, 32, 32, 3) height-width-channel, labels int64 (N,)) of one batch."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except OSError as err:
        raise DatasetError(f"cannot open CIFAR-10 batch {path} ({err.strerror}). Delete the "
                           f"download folder and run again.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as err:  # what malformed pickles raise
        raise DatasetError(f"cannot read CIFAR-10 batch {path} ({err!r}). Delete the download "
                           f"folder and run again.") from None
    data, labels = _batch_arrays(batch, path)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major
    return np.ascontiguousarray(images), labels


def _batch_arrays(batch, path):
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path} is not a CIFAR-10 batch (no data/labels). Delete the "
                           f"download folder and run again.")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072).")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DatasetError(f"{path}: {labels.shape[0]} labels for {len(data)} images, or labels "
                           f"outside 0..9.")
    return data, labels


# --- convert ----------------------------------------------------------------------------

def convert(batches_dir, data_dir, num_shards, source=None, progress=False):
    """Write the three splits as TFRecords plus manifests; returns the top-level manifest."""
    batches_dir, data_dir = Path(batches_dir), Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _start_rebuild(data_dir)
    splits = {}
    for split, names in tqdm(SPLITS.items(), desc="TFRecords", disable=not progress, leave=False):
        splits[split] = _convert_split(split, names, batches_dir, data_dir, num_shards)
    manifest = {"source": source or {}, "format": RECORD_FORMAT, "num_shards": num_shards,
                "splits": splits}
    write_json_atomic(data_dir / MANIFEST_NAME, manifest)  # last: the commit marker
    return manifest


def _start_rebuild(data_dir):
    """Drop the commit marker first, so an interrupted rebuild never looks complete."""
    for name in (MANIFEST_NAME, CHANNELS_NAME):  # uploaded copies describe the old files
        (data_dir / name).unlink(missing_ok=True)
    for leftover in data_dir.glob(TMP_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _convert_split(split, names, batches_dir, data_dir, num_shards):
    _require_batches(batches_dir, names)
    batches = [load_batch(batches_dir / name) for name in names]
    source_records = sum(len(labels) for _, labels in batches)
    if not 1 <= num_shards <= source_records:
        raise DatasetError(f"num_shards={num_shards} must be between 1 and the {source_records} "
                           f"records of '{split}'.")
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    shards = _write_split(split, images, labels, data_dir, num_shards)
    written = sum(s["records"] for s in shards)
    if written != source_records:  # the check whose absence hid a 10,000-image train split
        raise DatasetError(f"'{split}': wrote {written} records but {names} hold "
                           f"{source_records}. This is a bug in the converter; please report it.")
    return {"records": written, "source_batches": names,
            "shards": [dict(s, file=f"{split}/{s['file']}") for s in shards]}


def _require_batches(batches_dir, names):
    missing = [n for n in names if not (batches_dir / n).is_file()]
    if missing:
        raise DatasetError(f"{batches_dir} lacks {missing}: not a complete CIFAR-10 archive. "
                           f"Delete the download folder and run again.")


def _write_split(split, images, labels, data_dir, num_shards):
    """Shards and split manifest in a temp folder, renamed to ``data_dir/split`` when done."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{split}-", dir=data_dir))
    try:
        shards = []
        for index, (start, stop) in enumerate(_shard_bounds(len(labels), num_shards)):
            path = tmp / f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"
            shards.append(_write_shard(path, images[start:stop], labels[start:stop]))
        records = sum(s["records"] for s in shards)
        write_json_atomic(tmp / MANIFEST_NAME,
                          {"split": split, "records": records, "shards": shards})
        _replace_dir(tmp, data_dir / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return shards


def _shard_bounds(records, num_shards):
    """Consecutive (start, stop) ranges whose sizes differ by at most one."""
    edges = [records * i // num_shards for i in range(num_shards + 1)]
    return list(itertools.pairwise(edges))


def _write_shard(path, images, labels):
    import tensorflow as tf  # lazy: importing TensorFlow takes seconds

    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels):
            writer.write(_example(tf, image, label))
    records = sum(1 for _ in tf.data.TFRecordDataset(str(path)))  # count what is on disk
    if records != len(labels):
        raise DatasetError(f"{path}: {records} records on disk, {len(labels)} written.")
    return {"file": path.name, "records": records, "sha256": file_digest(path, "sha256"),
            "bytes": path.stat().st_size}


def _example(tf, image, label):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# --- state ------------------------------------------------------------------------------

def read_manifest(data_dir):
    """The top-level manifest, or None when there is none (or it is unreadable)."""
    try:
        with open(resolve(data_dir) / MANIFEST_NAME) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(data_dir):
    """True when the manifest exists and every shard it lists has its size and SHA-256."""
    data_dir = resolve(data_dir)
    manifest = read_manifest(data_dir)
    if not manifest or set(manifest.get("splits", {})) != set(SPLITS):
        return False
    for split, info in manifest["splits"].items():
        if not (data_dir / split / MANIFEST_NAME).is_file():
            return False
        for shard in info["shards"]:
            if not _shard_intact(data_dir / shard["file"], shard):
                return False
    return True


def _shard_intact(path, shard):
    return (path.is_file() and path.stat().st_size == shard["bytes"]
            and file_digest(path, "sha256") == shard["sha256"])


def record_counts(manifest):
    return {split: info["records"] for split, info in manifest["splits"].items()}


# --- the notebook's entry points -------------------------------------------------------

def prepare_cifar10(url=None, md5=None, data_dir=None, num_shards=8, progress=True):
    """Make ``data_dir`` hold verified CIFAR-10 TFRecords; returns the manifest.

    Complete data with the same source checksum and shard count is returned as it is,
    without touching the network or any file.
    """
    url, md5 = resolve_source(url, md5)
    data_dir = resolve(data_dir or DEFAULT_DATA_DIR)
    manifest = read_manifest(data_dir)
    if (manifest and manifest.get("num_shards") == num_shards
            and manifest.get("source", {}).get("md5") == md5 and is_complete(data_dir)):
        return manifest
    archive = download(url, md5, data_dir / "download", progress=progress)
    batches_dir = safe_extract(archive, data_dir / "download")
    try:
        return convert(batches_dir, data_dir, num_shards, source={"url": url, "md5": md5},
                       progress=progress)
    finally:
        shutil.rmtree(batches_dir, ignore_errors=True)  # the archive stays; this is a copy


def read_examples(data_dir, split, count=32):
    """(images uint8 (n, 32, 32, 3), labels int64 (n,)): the first ``count`` records of a
    split (all of them for count=None), decoded from its TFRecords."""
    import tensorflow as tf

    files = sorted(str(p) for p in (resolve(data_dir) / split).glob("*.tfrecord"))
    if not files:
        raise DatasetError(f"no TFRecords in {resolve(data_dir) / split}: run prepare_cifar10.")
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}
    records = tf.data.TFRecordDataset(files)
    if count is not None:
        records = records.take(count)
    images, labels = [np.zeros((0, 32, 32, 3), np.uint8)], [np.zeros(0, np.int64)]
    for batch in records.batch(1000):
        parsed = tf.io.parse_example(batch, features)
        images.append(tf.io.decode_raw(parsed["image"], tf.uint8).numpy().reshape(-1, 32, 32, 3))
        labels.append(parsed["label"].numpy())
    return np.concatenate(images), np.concatenate(labels)


def upload_channels(data_dir, sagemaker_session, bucket, prefix="cifar10"):
    """Upload each split folder (shards + manifest) to S3; returns {split: s3 URI}."""
    data_dir = resolve(data_dir)
    if not is_complete(data_dir):
        raise DatasetError(f"{data_dir} is not a complete CIFAR-10 conversion: run "
                           f"prepare_cifar10 before uploading.")
    if not bucket:
        raise DatasetError("no S3 bucket: set S3_BUCKET or use session.default_bucket().")
    channels = {split: sagemaker_session.upload_data(str(data_dir / split), bucket=bucket,
                                                     key_prefix=f"{prefix}/{split}")
                for split in SPLITS}
    write_json_atomic(data_dir / CHANNELS_NAME, channels)
    return channels


def read_channels(data_dir):
    """{split: s3 URI} from the last upload_channels, or None."""
    try:
        with open(resolve(data_dir) / CHANNELS_NAME) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


__all__ = [
    "CIFAR10_MD5", "CIFAR10_URL", "CLASS_NAMES", "SPLITS", "DatasetError", "convert",
    "download", "file_digest", "is_complete", "load_batch", "prepare_cifar10", "read_channels",
    "read_examples", "read_manifest", "record_counts", "resolve_source", "safe_extract",
    "upload_channels",
]
