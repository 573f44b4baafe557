"""What this machine can run: versions, GPUs, where we are, and which MODEs work here and why.

The machine checks live here, once: ``check_mode_available`` raises ``ModeUnavailable`` naming
what a MODE lacks (the notebooks' first cell calls it); ``report`` only reports, and raises
nothing when AWS or Docker is missing.
"""

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

MODES = ("process", "local", "host")


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


def mode_status(mode):
    """(usable, why not), by the same checks the training notebooks run before a job."""
    try:
        check_mode_available(mode)
    except ModeUnavailable as err:
        return False, str(err)
    return True, None


def aws_facts():
    import boto3

    session = boto3.Session()
    return session.region_name, session.get_credentials() is not None


def horovod_fix():
    """How to get Horovod for process mode on this machine."""
    if where_am_i() == "SageMaker notebook instance":
        return "run 0.0 again with INSTALL_HOROVOD = True"
    return "`make setup` (Debian/Ubuntu), or 0.0 with INSTALL_HOROVOD = True"


def report(python=None):
    """Everything above in one dict, plus which MODEs work here; for the kernel of ``python``
    (0.0 reports on the workshop's kernel, which need not be the one it runs in)."""
    if python and Path(python).absolute() != Path(sys.executable).absolute():
        out = subprocess.run([str(python), "-m", "workshop.environment"], capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{python} -m workshop.environment failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.splitlines()[-1])
    facts = {"python": platform.python_version(), **tensorflow_facts(),
             "sagemaker_sdk": version("sagemaker"), "where": where_am_i()}
    facts["horovod"], horovod_problem = horovod_status()
    facts["region"], facts["aws_credentials"] = aws_facts()
    local_ok, local_problem = mode_status("local")
    host_ok, host_problem = mode_status("host")
    facts["modes"] = {
        "process": "yes" if facts["tensorflow"] else "no: TensorFlow is not installed",
        "process (Horovod/SMDDP notebooks)": "yes" if facts["horovod"] else
            f"no: Horovod unavailable ({horovod_problem}); {horovod_fix()}",
        "local": "yes" if local_ok else f"no: {local_problem}",
        "host": "yes" if host_ok else f"no: {host_problem}",
    }
    return facts


def print_report(facts):
    for key in ("python", "tensorflow", "keras", "sagemaker_sdk", "horovod", "gpus", "where",
                "region", "aws_credentials"):
        print(f"{key:>16}: {facts.get(key)}")
    print("\nMODEs on this machine:")
    for mode, verdict in facts["modes"].items():
        print(f"  {mode:<34} {verdict}")


# ------------------------------------------------------------ checks before a job


class ModeUnavailable(RuntimeError):
    """This machine cannot run the chosen MODE; the message says what is missing."""



def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"MODE must be one of {MODES}, got {mode!r}")
    return mode



def nvidia_gpu_present():
    return command_succeeds(["nvidia-smi", "-L"])



def check_mode_available(mode, role=None, horovod=False):
    """Raise ModeUnavailable naming what this machine lacks for ``mode``; ``horovod``: the
    notebook's entry point runs under mpirun with Horovod (1.5, 2.2, 3.1)."""
    check_mode(mode)
    if mode == "process" and horovod:
        check_horovod()
    elif mode == "local":
        check_docker()
    elif mode == "host":
        check_aws(role)


def check_docker():
    fix = "Start Docker (or use MODE='process', which needs neither)."
    if not shutil.which("docker"):
        raise ModeUnavailable(f"MODE='local' needs Docker: no `docker` command here. {fix}")
    if not command_succeeds(["docker", "info"]):
        raise ModeUnavailable(f"MODE='local' needs a running Docker engine: `docker info` "
                              f"fails. {fix}")
    if not (command_succeeds(["docker", "compose", "version"])
            or command_succeeds(["docker-compose", "version"])):
        raise ModeUnavailable("MODE='local' needs docker compose (the SDK starts the training "
                              "containers with it): install the compose plugin. " + fix)


def check_horovod():
    """Process mode runs the Horovod ranks in this kernel's Python, started by mpirun."""
    others = "or use MODE='local' (Docker; the 2.12 image has Horovod) or MODE='host'"
    version, problem = horovod_status()
    if version is None:
        raise ModeUnavailable(f"MODE='process' runs this notebook's Horovod ranks in this "
                              f"kernel, which has no Horovod ({problem}): {horovod_fix()}, "
                              f"{others}.")
    if not shutil.which("mpirun"):
        raise ModeUnavailable(f"MODE='process' starts the Horovod ranks with Open MPI's mpirun, "
                              f"which this machine lacks: install Open MPI (Debian/Ubuntu: "
                              f"`apt-get install openmpi-bin`), {others}.")


def check_aws(role):
    import boto3

    from .jobs import role_for, session_for  # the role lookup host mode uses

    session = boto3.Session()
    if session.get_credentials() is None:
        raise ModeUnavailable("MODE='host' needs AWS credentials: run `aws configure`, set "
                              "AWS_PROFILE, or use a SageMaker notebook's role.")
    if not session.region_name:
        raise ModeUnavailable("MODE='host' needs an AWS region: set AWS_DEFAULT_REGION.")
    role_for("host", role, session_for("host"))


def command_succeeds(command, timeout=20):
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


if __name__ == "__main__":  # what report(python) reads from another kernel's Python
    print(json.dumps(report()))
