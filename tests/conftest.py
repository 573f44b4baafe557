"""Shared fixtures: a synthetic CIFAR-10 archive, a loopback HTTP server, converted data.

The archive has the real layout (see synthetic_cifar.py) with 256 images per batch, so the
converted data holds train 1,024 / validation 256 / eval 256 records.
"""

import atexit
import functools
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import synthetic_cifar

TESTS_DIR = Path(__file__).resolve().parent
PHASE0_DIR = TESTS_DIR.parent / "code" / "phase0"

# No AWS here: don't let boto3 probe the EC2 metadata service. Job folders and executed
# notebooks of the tests (and of the kernels they start) go to a throwaway folder.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["WORKSHOP_RUNS_DIR"] = tempfile.mkdtemp(prefix="workshop-runs-")
atexit.register(shutil.rmtree, os.environ["WORKSHOP_RUNS_DIR"], ignore_errors=True)

PER_BATCH = 256
TRUNCATED_PREFIX = "/truncated/"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; under /truncated/ a file is announced whole but only half is sent."""

    def do_GET(self):
        if not self.path.startswith(TRUNCATED_PREFIX):
            return super().do_GET()
        path = Path(self.directory) / self.path[len(TRUNCATED_PREFIX):]
        payload = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True  # the client sees the connection end early

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="session")
def http_server():
    """Factory: ``http_server(directory) -> "http://127.0.0.1:PORT"`` serving that folder.

    ``base + "/truncated/<name>"`` serves <name> with its full Content-Length but half the
    bytes. All servers are shut down at the end of the session.
    """
    servers = []

    def serve(directory):
        handler = functools.partial(_Handler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory):
    """SimpleNamespace(path, md5, counts) of a synthetic cifar-10-python.tar.gz."""
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    made = synthetic_cifar.make_archive(path, per_batch=PER_BATCH)
    return SimpleNamespace(path=path, md5=made["md5"], counts=made["counts"])


@pytest.fixture(scope="session")
def cifar_url(http_server, cifar_archive):
    return f"{http_server(cifar_archive.path.parent)}/{cifar_archive.path.name}"


@pytest.fixture(scope="session")
def cifar_data_dir(tmp_path_factory, cifar_url, cifar_archive):
    """Path of the archive converted to TFRecords (4 shards a split). Treat as read-only."""
    from workshop.dataset import prepare_cifar10

    data_dir = tmp_path_factory.mktemp("data") / "cifar10"
    prepare_cifar10(url=cifar_url, md5=cifar_archive.md5, data_dir=data_dir, num_shards=4,
                    progress=False)
    return data_dir
