"""Fixtures of the SDK v3 tests. These run in .venv-sdk3 (v2 and v3 cannot share a venv), started
by tests/test_sdk3.py from the main suite, or by hand:

  .venv-sdk3/bin/python -m pytest -q tests_sdk3

moto_server is this venv's own, on loopback; nothing reaches AWS (telemetry is switched off).
"""

import ast
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import synthetic_cifar  # tests/, on pytest.ini's pythonpath

from workshop import PHASE0_DIR, files

NOTEBOOK = PHASE0_DIR / "6.0.SDK-v3-ModelTrainer.ipynb"
REGION = "us-east-1"
BUCKET = "workshop-sdk3-requests"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
TELEMETRY_OPT_OUT = ("SchemaVersion: '1.0'\n"
                     "SageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """URL of this venv's moto_server; boto3 (and so SDK v3) points at it for the session."""
    folder = tmp_path_factory.mktemp("aws")
    (folder / "config.yaml").write_text(TELEMETRY_OPT_OUT)
    port = files.free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "wb")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start: {(folder / 'moto.log').read_text()}")
            time.sleep(0.2)
    saved = dict(os.environ)
    os.environ.update({
        "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(folder / "config.yaml"),
        # v3 checks the role with iam:SimulatePrincipalPolicy, which moto does not implement.
        "SAGEMAKER_VALIDATE_ROLE": "false"})
    try:
        yield url
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def host_data_dir(moto_server, tmp_path_factory):
    """A DATA_DIR as 1.0 leaves it in host mode: s3_channels.json naming S3 prefixes (with one
    object each), and the downloaded archive (6.0's deploy cell reads eval images from it)."""
    import boto3

    data_dir = tmp_path_factory.mktemp("data") / "cifar10"
    (data_dir / "download").mkdir(parents=True)
    synthetic_cifar.make_archive(data_dir / "download" / "cifar-10-python.tar.gz", per_batch=16)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    # v3 looks the role up (iam:GetRole) when ModelTrainer is built: it must exist.
    boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[1], AssumeRolePolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": '
        '"sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'))
    channels = {}
    for split in ("train", "validation", "eval"):
        s3.put_object(Bucket=BUCKET, Key=f"cifar10/{split}/{split}-00000.tfrecord", Body=b"x")
        channels[split] = f"s3://{BUCKET}/cifar10/{split}"
    (data_dir / "s3_channels.json").write_text(json.dumps(channels))
    return data_dir


def code_cells():
    return [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def run_cells(namespace, *markers, **parameters):
    """Execute 6.0's code cells as a learner's kernel would: the parameters cell with
    ``parameters`` injected after it (as papermill does), then, for each marker, the first cell
    containing it, up to (not including) its first ``with`` block (where a job runs)."""
    cells = code_cells()
    if not namespace:
        exec(compile(cells[0], "6.0[0]", "exec"), namespace)
        namespace.update(parameters)
    for marker in markers:
        (index, source) = next((i, s) for i, s in enumerate(cells) if marker in s)
        tree = ast.parse(source)
        body = []
        for node in tree.body:
            if isinstance(node, ast.With):
                break
            body.append(node)
        exec(compile(ast.Module(body=body, type_ignores=[]), f"6.0[{index}]", "exec"), namespace)
    return namespace
