"""A real moto_server on loopback, for tests that drive the real SageMaker SDK without AWS.

Use with ``from aws_fixtures import *``:
  sdk_offline      switches off what would reach AWS hosts whatever the endpoint: the EC2
                   metadata probe at import and the SDK's telemetry call on every fit().
  moto_server      starts ``.venv/bin/moto_server -H 127.0.0.1 -p <free port>`` and points boto3
                   at it (AWS_ENDPOINT_URL, dummy keys, us-east-1); killed at teardown.
  probe_estimator  factory of offline TensorFlow estimators running tests/probe_entry/probe.py.
Environment changes are undone at the end of the session.
"""

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from workshop.files import free_ports

__all__ = ["moto_server", "sdk_offline", "probe_estimator", "free_port", "PROBE_DIR"]

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
PROBE_DIR = Path(__file__).resolve().parent / "probe_entry"
REGION = "us-east-1"
# The SDK validates this file against its schema, which requires SchemaVersion.
TELEMETRY_OPT_OUT = ("SchemaVersion: '1.0'\n"
                     "SageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
STARTUP_SECONDS = 30


def free_port():
    return free_ports(1)[0]


def _wait_until_answering(url, server, log_path):
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"moto_server did not answer at {url} within {STARTUP_SECONDS}s; "
                       f"its log: {log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def _environ(values):
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def sdk_offline(tmp_path_factory):
    """Env for using SageMaker SDK v2 with no AWS: nothing it does may leave the machine.

    Yields the folder holding the telemetry opt-out config.
    """
    folder = tmp_path_factory.mktemp("aws")
    config = folder / "sagemaker-config.yaml"
    config.write_text(TELEMETRY_OPT_OUT)
    with _environ({
        # SDK v2 probes the EC2 metadata service at import when no credentials are found.
        "AWS_EC2_METADATA_DISABLED": "true",
        # Each fit() sends telemetry to an AWS host that ignores AWS_ENDPOINT_URL.
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }):
        yield folder


@pytest.fixture(scope="session")
def moto_server(sdk_offline):
    """URL of a moto_server on 127.0.0.1, with boto3/SDK env pointed at it for the session."""
    if not MOTO_SERVER.exists():
        pytest.fail(f"{MOTO_SERVER} is missing: install moto[server] into the test venv")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = sdk_offline / "moto_server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_answering(url, server, log_path)
        with _environ({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}):
            yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def probe_estimator(sdk_offline):
    """Factory: a real TensorFlow estimator for probe.py, built offline as process mode builds it.

    ``probe_estimator(hyperparameters=None, distribution=None, instance_count=1,
    framework_version="2.21", py_version="py312", sagemaker_session=None, **kwargs)``;
    sagemaker_session=jobs.session_for("local") runs it in SDK local mode instead.
    """
    from sagemaker.tensorflow import TensorFlow

    from workshop import images, jobs

    session = jobs.session_for("process")

    def make(hyperparameters=None, distribution=None, instance_count=1, framework_version="2.21",
             py_version="py312", sagemaker_session=None, **kwargs):
        if framework_version == "2.21":  # the supported image, which the SDK does not resolve
            kwargs.setdefault("image_uri", images.uri(images.TRAINING_2_21_CPU))
        return TensorFlow(
            entry_point="probe.py", source_dir=str(PROBE_DIR), role=jobs.OFFLINE_ROLE,
            framework_version=framework_version, py_version=py_version, instance_type="local",
            instance_count=instance_count, distribution=distribution,
            sagemaker_session=sagemaker_session or session,
            hyperparameters={"epochs": 3, "batch-size": 64, **(hyperparameters or {})},
            base_job_name="probe", disable_profiler=True, **kwargs)

    return make
