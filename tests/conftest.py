"""Shared fixtures: a synthetic CIFAR-10 archive, a loopback HTTP server, converted data, and
the runs of the notebooks that several files check.

The archive has the real layout (see synthetic_cifar.py) with 256 images per batch, so the
converted data holds train 1,024 / validation 256 / eval 256 records.
"""

import atexit
import os
import random
import shutil
import subprocess
import tempfile

# First, before anything imports `workshop` (which reads WORKSHOP_RUNS_DIR once): no AWS here,
# so boto3 must not probe the EC2 metadata service; job folders and executed notebooks of the
# tests (and of the kernels they start) go to a throwaway folder, one per pytest process.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["WORKSHOP_RUNS_DIR"] = tempfile.mkdtemp(prefix="workshop-runs-")
atexit.register(shutil.rmtree, os.environ["WORKSHOP_RUNS_DIR"], ignore_errors=True)

import functools  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import synthetic_cifar  # noqa: E402
from aws_fixtures import sdk_offline  # noqa: E402, F401  (local_1_2 needs it)

TESTS_DIR = Path(__file__).resolve().parent
PHASE0_DIR = TESTS_DIR.parent / "code" / "phase0"

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


@pytest.fixture(scope="session")
def notebook_run(tmp_path_factory, cifar_data_dir):
    """Factory: ``notebook_run("1.2")`` -> SimpleNamespace(result, notebook, job_dir) of that
    notebook run in process mode with helpers.NOTEBOOK_RUN on the fixture data, once a session:
    1.2 and 2.1 as several files check them (the artifact and the log, the notebook's output,
    the sibling the distributed notebooks compare with, the model 4.1 deploys, 5.0's runs)."""
    from helpers import NOTEBOOK_RUN, job_folder, run_notebook

    done = {}

    def run(number):
        if number not in done:
            result, notebook = run_notebook(tmp_path_factory.mktemp(number), number,
                                            {"DATA_DIR": str(cifar_data_dir), **NOTEBOOK_RUN})
            done[number] = SimpleNamespace(result=result, notebook=notebook,
                                           job_dir=job_folder(result))
        return done[number]

    return run


@pytest.fixture(scope="session")
def local_1_2(sdk_offline, tmp_path_factory, cifar_data_dir):  # noqa: F811
    """(RESULT, executed notebook) of 1.2 in local mode with helpers.LOCAL_RUN, once a session:
    test_local_mode checks its job and 4.1 deploys its model; 6.0 compares v3's run with it."""
    from helpers import LOCAL_RUN, run_notebook

    return run_notebook(tmp_path_factory.mktemp("local-1.2"), "1.2",
                        {"MODE": "local", "DATA_DIR": str(cifar_data_dir), **LOCAL_RUN})


# `make test` runs the files on pytest-xdist workers (three: TEST_WORKERS in the Makefile). A
# file's tests stay on one worker, so its module fixtures train once; files that share a session
# fixture's training are one group (test_sdk3 compares 6.0's run with local_1_2, which
# test_local_mode checks). Jobs of the SDK's local mode that run at once share three things:
# - Docker's network "sagemaker-local", which every job's compose file declares and the first
#   job creates (sagemaker/local/image.py); two first jobs at once could both create it, so
#   pytest_sessionstart creates it before any worker starts;
# - port 8080, which an endpoint binds: only 4.1's test deploys one;
# - the images: test_killed_job finds its job's container by the job's name, and 4.1's test
#   counts the inference image's containers, which no other group runs.
# So the local-mode files are two groups, which run beside each other and beside the
# notebook-instance test (mostly pip downloading). These longest groups go first
# (--no-loadscope-reorder keeps this order); the other workers take the short files.
GROUPS = {"test_local_mode.py": "local-mode notebooks", "test_sdk3.py": "local-mode notebooks",
          "test_images.py": "local-mode images", "test_killed_job.py": "local-mode images",
          "test_conformance.py": "local-mode images"}
FIRST_GROUPS = ["local-mode images", "local-mode notebooks", "test_notebook_instance.py"]
LOCAL_MODE_NETWORK = "sagemaker-local"


def group_of(path):
    name = Path(path).name
    return GROUPS.get(name, name)


def pytest_sessionstart(session):
    """Once, before the workers start (the controller, or the only process): the network that
    local mode's jobs share, if a Docker engine answers."""
    if hasattr(session.config, "workerinput") or shutil.which("docker") is None:
        return
    found = subprocess.run(["docker", "network", "inspect", LOCAL_MODE_NETWORK],
                           capture_output=True, timeout=60)
    if found.returncode != 0:
        subprocess.run(["docker", "network", "create", LOCAL_MODE_NETWORK], capture_output=True,
                       timeout=60)


def pytest_collection_finish(session):
    """pytest-random-order shuffles with ``random.seed(<its seed>)``, in every worker alike, and
    the SDK's local mode names each job's containers with ``random``: the same names in two
    workers at once, or in a rerun of the seed beside the exited containers of the last one
    ("Conflict. The container name ... is already in use"). Reseeded from the OS, as unshuffled."""
    random.seed()


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, with this file's groups as the scopes (its own xdist_group
    mark renames node ids, which pytest 9 no longer lets a plugin do)."""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid.split("::", 1)[0])

    return FileGroups(config, log)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        group = group_of(item.path)
        return FIRST_GROUPS.index(group) if group in FIRST_GROUPS else len(FIRST_GROUPS)

    items.sort(key=rank)  # a stable sort: the rest keep their order
