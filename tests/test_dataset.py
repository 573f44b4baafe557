"""workshop.dataset: what a workshop user would check about the CIFAR-10 preparation."""

import io
import json
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import synthetic_cifar
from conftest import PER_BATCH, TRUNCATED_PREFIX

from workshop import dataset
from workshop.dataset import DatasetError
from workshop.files import free_ports

EXPECTED = {"train": 4 * PER_BATCH, "validation": PER_BATCH, "eval": PER_BATCH}


def closed_port_url():
    """A loopback URL nobody listens on: connection refused."""
    port = free_ports(1)[0]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def source_split(archive, split):
    """(images HWC, labels) of a split straight from the archive's pickles (trusted here)."""
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for name in dataset.SPLITS[split]:
            batch = pickle.load(tar.extractfile(f"cifar-10-batches-py/{name}"), encoding="bytes")
            images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch[b"labels"])
    return np.concatenate(images), np.array(labels)


def shard_mtimes(data_dir):
    return {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}


# --- a good run ----------------------------------------------------------------------------

def test_counts_in_manifest_and_in_the_records(cifar_data_dir):
    manifest = dataset.read_manifest(cifar_data_dir)
    assert dataset.record_counts(manifest) == EXPECTED
    assert dataset.is_complete(cifar_data_dir)
    for split, records in EXPECTED.items():
        shards = sorted((cifar_data_dir / split).glob("*.tfrecord"))
        assert [p.name for p in shards] == [f"{split}-{i:05d}-of-00004.tfrecord" for i in range(4)]
        split_manifest = json.loads((cifar_data_dir / split / "manifest.json").read_text())
        assert split_manifest["records"] == records
        assert [s["records"] for s in split_manifest["shards"]] == [records // 4] * 4
        images, labels = dataset.read_examples(cifar_data_dir, split, records + 10)
        assert images.shape == (records, 32, 32, 3) and labels.shape == (records,)
    assert manifest["splits"]["train"]["source_batches"] == dataset.SPLITS["train"]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_pixels_and_labels_round_trip(cifar_data_dir, cifar_archive, split):
    expected_images, expected_labels = source_split(cifar_archive.path, split)
    images, labels = dataset.read_examples(cifar_data_dir, split, EXPECTED[split])
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_training_pipeline_reads_every_record(cifar_data_dir):
    from cifar.data import count_records, make_dataset

    assert count_records(str(cifar_data_dir / "train")) == EXPECTED["train"]
    ds = make_dataset(str(cifar_data_dir / "train"), 64, training=False)
    assert sum(int(images.shape[0]) for images, _ in ds) == EXPECTED["train"]


# --- where the data comes from ----------------------------------------------------------------

def test_source_precedence(monkeypatch):
    monkeypatch.delenv("CIFAR10_URL", raising=False)
    monkeypatch.delenv("CIFAR10_MD5", raising=False)
    assert dataset.resolve_source() == (dataset.CIFAR10_URL, dataset.CIFAR10_MD5)
    monkeypatch.setenv("CIFAR10_URL", "http://mirror/c.tgz")
    with pytest.raises(DatasetError, match="CIFAR10_MD5"):  # a mirror needs its own checksum
        dataset.resolve_source()
    monkeypatch.setenv("CIFAR10_MD5", "A" * 32)
    assert dataset.resolve_source() == ("http://mirror/c.tgz", "a" * 32)
    assert dataset.resolve_source("http://x/y.tgz", "b" * 32) == ("http://x/y.tgz", "b" * 32)
    assert dataset.resolve_source("", "") == ("http://mirror/c.tgz", "a" * 32)


def test_environment_variables_drive_prepare(monkeypatch, tmp_path, cifar_url, cifar_archive):
    monkeypatch.setenv("CIFAR10_URL", cifar_url)
    monkeypatch.setenv("CIFAR10_MD5", cifar_archive.md5)
    manifest = dataset.prepare_cifar10(data_dir=tmp_path, num_shards=1, progress=False)
    assert manifest["source"] == {"url": cifar_url, "md5": cifar_archive.md5}
    assert dataset.record_counts(manifest) == EXPECTED


@pytest.mark.parametrize("kind", ["file_url", "plain_path"])
def test_local_sources(tmp_path, cifar_archive, kind):
    source = cifar_archive.path.as_uri() if kind == "file_url" else str(cifar_archive.path)
    path = dataset.download(source, cifar_archive.md5, tmp_path, progress=False)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    assert synthetic_cifar.file_md5(path) == cifar_archive.md5
    assert os.listdir(tmp_path) == ["cifar-10-python.tar.gz"]


# --- download failures: a clear error, and nothing left behind ------------------------------

def test_wrong_checksum(tmp_path, cifar_url, cifar_archive):
    with pytest.raises(DatasetError) as err:
        dataset.download(cifar_url, "0" * 32, tmp_path, progress=False)
    message = str(err.value)
    assert "expected MD5 " + "0" * 32 in message and "got " + cifar_archive.md5 in message
    assert "CIFAR10_URL / CIFAR10_MD5" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case, match", [
    ("truncated", "truncated"),
    ("refused", "could not reach"),
    ("404", "HTTP 404"),
    ("missing_file", "cannot be read"),
])
def test_download_failures(tmp_path, http_server, cifar_archive, case, match):
    base = http_server(cifar_archive.path.parent)
    url = {"truncated": f"{base}{TRUNCATED_PREFIX}{cifar_archive.path.name}",
           "refused": closed_port_url(),
           "404": f"{base}/no-such-file.tar.gz",
           "missing_file": str(tmp_path / "absent.tar.gz")}[case]
    dest = tmp_path / "download"
    with pytest.raises(DatasetError, match=match):
        dataset.download(url, cifar_archive.md5, dest, progress=False)
    assert os.listdir(dest) == []


def test_truncated_archive_on_disk(tmp_path, cifar_archive):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(cifar_archive.path.read_bytes()[:20_000])
    with pytest.raises(DatasetError, match="truncated or corrupt.*Delete it") as err:
        dataset.safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(err.value)
    assert os.listdir(tmp_path / "out") == []


# --- hostile archives -----------------------------------------------------------------------

class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _RunsShell(marker), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        dataset.load_batch(batch)
    assert not marker.exists()


def test_malicious_batch_in_archive_stops_prepare(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _RunsShell(marker), b"labels": []}, protocol=2)
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    made = synthetic_cifar.make_archive(  # a later member of the same name wins on extraction
        archive, per_batch=8, extra_members=[("cifar-10-batches-py/data_batch_1", evil)])
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        dataset.prepare_cifar10(str(archive), made["md5"], tmp_path / "data", 2, progress=False)
    assert not marker.exists()
    assert dataset.read_manifest(tmp_path / "data") is None


def hostile_archive(path, member, payload=b""):
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"good"))
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    return path


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, match", [
    (_member("../evil"), "unsafe path"),
    (_member("cifar-10-batches-py/../../evil"), "unsafe path"),
    (_member("/tmp/evil-absolute"), "unsafe path"),
    (_member("cifar-10-batches-py/evil", tarfile.SYMTYPE, "../../evil"), "link or device"),
    (_member("cifar-10-batches-py/evil", tarfile.LNKTYPE, "/etc/passwd"), "link or device"),
    (_member("cifar-10-batches-py/evil", tarfile.CHRTYPE), "link or device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"])
def test_hostile_members_rejected(tmp_path, member, match):
    payload = b"x" if member.isreg() else b""
    archive = hostile_archive(tmp_path / "evil.tar.gz", member, payload)
    target = tmp_path / "deep" / "target"
    with pytest.raises(DatasetError, match=match):
        dataset.safe_extract(archive, target)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    assert not os.path.lexists("/tmp/evil-absolute")
    assert os.listdir(target) == []


# --- reruns ---------------------------------------------------------------------------------

def test_rerun_of_complete_data_touches_nothing(cifar_data_dir, cifar_archive):
    before = shard_mtimes(cifar_data_dir)
    manifest = dataset.prepare_cifar10(  # unreachable source: would fail if it downloaded
        url=closed_port_url(), md5=cifar_archive.md5, data_dir=cifar_data_dir, num_shards=4)
    assert dataset.record_counts(manifest) == EXPECTED
    assert shard_mtimes(cifar_data_dir) == before


def test_corrupted_shard_is_detected_and_rebuilt(tmp_path, cifar_data_dir, cifar_url,
                                                 cifar_archive):
    data_dir = tmp_path / "cifar10"
    shutil.copytree(cifar_data_dir, data_dir)
    shard = data_dir / "validation" / "validation-00001-of-00004.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[100:110] = bytes(b ^ 0xFF for b in raw[100:110])
    shard.write_bytes(bytes(raw))
    assert not dataset.is_complete(data_dir)
    manifest = dataset.prepare_cifar10(cifar_url, cifar_archive.md5, data_dir, 4, progress=False)
    assert dataset.is_complete(data_dir)
    assert dataset.record_counts(manifest) == EXPECTED
    assert shard.read_bytes() == (cifar_data_dir / shard.relative_to(data_dir)).read_bytes()


def test_changing_shard_count_rebuilds(tmp_path, cifar_data_dir, cifar_url, cifar_archive):
    data_dir = tmp_path / "cifar10"
    shutil.copytree(cifar_data_dir, data_dir)
    manifest = dataset.prepare_cifar10(cifar_url, cifar_archive.md5, data_dir, 3, progress=False)
    assert manifest["num_shards"] == 3
    assert len(list((data_dir / "train").glob("*.tfrecord"))) == 3
    assert dataset.record_counts(manifest) == EXPECTED
