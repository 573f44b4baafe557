"""What this machine can run: versions, GPUs, where we are, and which MODEs work here and why.

Everything here reports; nothing raises when AWS or Docker is missing.
"""

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

from . import PHASE0_DIR

REQUIREMENTS = PHASE0_DIR.parent.parent / "requirements.txt"


def install_requirements(requirements=REQUIREMENTS):
    """pip-install the workshop's pinned requirements into this kernel's Python."""
    command = [sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorflow_facts():
    try:
        import tensorflow as tf
    except ImportError as err:
        return {"tensorflow": None, "keras": None, "gpus": [], "error": str(err)}
    import keras

    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "gpus": gpus}


def horovod_status():
    try:
        import horovod.tensorflow  # noqa: F401
    except Exception as err:  # ImportError, or a Horovod built against another TF
        return None, f"{type(err).__name__}: {err}".splitlines()[0]
    return version("horovod"), None


def where_am_i():
    """'SageMaker notebook instance', 'SageMaker Studio' or 'other'."""
    if os.path.exists("/opt/ml/metadata/resource-metadata.json"):
        try:
            with open("/opt/ml/metadata/resource-metadata.json") as f:
                if "DomainId" in json.load(f):
                    return "SageMaker Studio"
        except (OSError, ValueError):
            pass
        return "SageMaker notebook instance"
    if os.environ.get("SAGEMAKER_SPACE_NAME") or os.path.isdir("/opt/.sagemakerinternal"):
        return "SageMaker Studio"
    return "other"


def docker_status():
    """(usable, why not): local mode needs a running Docker engine and docker compose."""
    if not shutil.which("docker"):
        return False, "no docker command"
    if _run(["docker", "info"]) != 0:
        return False, "docker is installed but no Docker engine answers (docker info failed)"
    if _run(["docker", "compose", "version"]) != 0 and not shutil.which("docker-compose"):
        return False, "docker compose is missing"
    return True, None


def aws_status():
    """(region, has credentials, role or None, why not) — host mode needs all three."""
    import boto3

    session = boto3.Session()
    region = session.region_name
    credentials = session.get_credentials() is not None
    if not credentials:
        return region, False, None, "no AWS credentials found"
    if not region:
        return region, True, None, "no AWS region configured (AWS_DEFAULT_REGION)"
    try:
        import sagemaker

        return region, True, sagemaker.get_execution_role(), None
    except Exception as err:  # outside SageMaker there is no execution role to find
        return region, True, None, ("no SageMaker execution role found; pass ROLE_ARN to the "
                                    f"training notebooks ({type(err).__name__})")


def _run(command, timeout=10):
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


def report():
    """Everything above in one dict, plus which MODEs work here."""
    facts = {"python": platform.python_version(), **tensorflow_facts(),
             "sagemaker_sdk": version("sagemaker"), "where": where_am_i()}
    facts["horovod"], horovod_problem = horovod_status()
    docker_ok, docker_problem = docker_status()
    facts["region"], facts["aws_credentials"], facts["role"], aws_problem = aws_status()
    facts["modes"] = {
        "process": "yes" if facts["tensorflow"] else "no: TensorFlow is not installed",
        "process (Horovod/SMDDP notebooks)": "yes" if facts["horovod"] else
            f"no: Horovod unavailable ({horovod_problem}); run `make setup`",
        "local": "yes" if docker_ok else f"no: {docker_problem}",
        "host": "yes" if not aws_problem else f"no: {aws_problem}",
    }
    return facts


def print_report(facts):
    for key in ("python", "tensorflow", "keras", "sagemaker_sdk", "horovod", "gpus", "where",
                "region", "aws_credentials", "role"):
        print(f"{key:>16}: {facts.get(key)}")
    print("\nMODEs on this machine:")
    for mode, verdict in facts["modes"].items():
        print(f"  {mode:<34} {verdict}")
