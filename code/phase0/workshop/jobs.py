"""One API for the notebooks: build the Estimator for a MODE, run it, collect the result.

    estimator = jobs.make_estimator(MODE, "train_keras.py", {"epochs": EPOCHS, ...})
    result = jobs.run(estimator, jobs.data_channels(MODE, DATA_DIR), MODE)
    result.metrics, result.history, result.model_artifact ...

MODE:
  process  the entry point runs on this machine under the SageMaker container contract
           (process_mode.py); the Estimator is only read, never fit. No AWS, no Docker.
  local    SageMaker local mode: the SDK runs the TF training image with docker compose.
  host     a real SageMaker training job.

Checkpoints (``checkpoint=True``): host mode sends ``checkpoint_s3_uri =
s3://<bucket>/<unique job-like name>/checkpoints``, so a spot-interrupted job resumes and a new
estimator starts afresh. Process mode uses ``file://<runs>/checkpoints/<unique name>`` (process
mode links it into the job folder, like SageMaker's sync). Local mode has none: the SDK rejects
checkpoint_s3_uri there. Spot settings apply to host mode only.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import DEFAULT_DATA_DIR, RUNS_DIR, SRC_DIR, resolve
from .dataset import CHANNELS_NAME, SPLITS
from .files import write_json_atomic
from .log_format import METRIC_DEFINITIONS  # noqa: F401  (notebooks use jobs.METRIC_DEFINITIONS)
from .process_mode import run_process_job

# Harmless for everyone: silences the SDK v2 deprecation banner printed at import, and the
# SDK's "Not applying SDK defaults from location ..." notices on every Estimator.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)

MODES = ("process", "local", "host")
DEFAULT_HOST_INSTANCE = "ml.p3.2xlarge"
DEFAULT_REGION = "us-east-1"  # process/local only name images with it; nothing is called
# Never used to call AWS: process and local mode only need the Estimator to have a role.
OFFLINE_ROLE = "arn:aws:iam::111111111111:role/workshop-offline-no-aws"



class ModeUnavailable(RuntimeError):
    """This machine cannot run the chosen MODE; the message says what is missing."""


@dataclass
class JobResult:
    """The same for all modes; host mode with wait=False fills job_name only."""
    mode: str
    job_name: str
    model_artifact: Optional[Path] = None   # local model.tar.gz
    output_dir: Optional[Path] = None       # output.tar.gz's contents (metrics.json, tensorboard/)
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    logs_path: Optional[Path] = None        # process mode; host/local logs stream to stdout
    wall_seconds: float = 0.0
    status: str = "Completed"               # or "Stopped": max_run reached (DescribeTrainingJob)
    stop_reason: Optional[str] = None       # "MaxRuntimeExceeded" (SageMaker's secondary status)
    stopped_after_epoch: Optional[int] = None  # Stopped: the last finished epoch


# ------------------------------------------------------------------------------- building


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"MODE must be one of {MODES}, got {mode!r}")
    return mode


def make_session(mode, bucket=None):
    """The SageMaker session for a mode. process/local: a LocalSession that never calls AWS."""
    import boto3

    check_mode(mode)
    if mode == "host":
        import sagemaker

        boto_session = boto3.Session()  # honours AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL
        if not boto_session.region_name:
            raise ModeUnavailable("MODE='host' needs an AWS region: set AWS_DEFAULT_REGION "
                                  "(or `region` in ~/.aws/config).")
        # default_bucket given: the SDK would otherwise ask STS for the account id.
        return sagemaker.Session(boto_session=boto_session, default_bucket=bucket or None)
    from sagemaker.local import LocalSession

    region = boto3.Session().region_name or DEFAULT_REGION
    session = LocalSession(boto_session=boto3.Session(region_name=region))
    # Mount src/ into the container instead of uploading it to S3 (local mode without AWS).
    session.config = {"local": {"local_code": True}}
    return session


def make_estimator(mode, entry_point, hyperparameters, framework_version="2.19",
                   py_version="py312", distribution=None, instance_type=None, instance_count=1,
                   role=None, bucket=None, use_spot=False, max_run=3600, max_wait=None,
                   checkpoint=True, base_job_name=None, session=None):
    """A ``sagemaker.tensorflow.TensorFlow`` for ``src/<entry_point>``, set up for ``mode``."""
    from sagemaker.tensorflow import TensorFlow
    from sagemaker.utils import name_from_base

    check_mode(mode)
    session = session or make_session(mode, bucket)
    base_job_name = base_job_name or "cifar10-" + Path(entry_point).stem.replace("_", "-")
    spot = spot_settings(use_spot, max_run, max_wait) if mode == "host" else {}
    checkpoint_uri = checkpoint_location(mode, session, bucket, name_from_base(base_job_name)) \
        if checkpoint else None
    return TensorFlow(
        entry_point=entry_point, source_dir=str(SRC_DIR), hyperparameters=dict(hyperparameters),
        framework_version=framework_version, py_version=py_version, distribution=distribution,
        instance_type=pick_instance_type(mode, instance_type, instance_count),
        instance_count=instance_count,
        role=pick_role(mode, role, session), sagemaker_session=session,
        metric_definitions=METRIC_DEFINITIONS, base_job_name=base_job_name, max_run=max_run,
        checkpoint_s3_uri=checkpoint_uri, disable_profiler=True, **spot)


def spot_settings(use_spot, max_run, max_wait):
    if not use_spot:
        return {}
    max_wait = max_wait or 2 * max_run
    if max_wait < max_run:
        raise ValueError(f"max_wait ({max_wait}s) must be >= max_run ({max_run}s): it is the "
                         f"training time plus the time spent waiting for spot capacity.")
    return {"use_spot_instances": True, "max_wait": max_wait}


def checkpoint_location(mode, session, bucket, unique_name):
    if mode == "host":
        return f"s3://{bucket or session.default_bucket()}/{unique_name}/checkpoints"
    if mode == "process":
        return f"file://{RUNS_DIR / 'checkpoints' / unique_name}"
    return None  # local mode: the SDK raises if checkpoint_s3_uri is set


def pick_instance_type(mode, instance_type, instance_count=1):
    if mode == "host":
        return instance_type or DEFAULT_HOST_INSTANCE
    # The SDK refuses local_gpu with more than one instance ("Distributed Training in Local GPU
    # is not supported"), so multi-instance local jobs run on CPU containers.
    if mode == "local" and instance_count == 1 and nvidia_gpu_present():
        return "local_gpu"
    return "local"  # process mode: only read, never fit


def nvidia_gpu_present():
    return command_succeeds(["nvidia-smi", "-L"])


def pick_role(mode, role, session):
    if mode != "host":
        return role or OFFLINE_ROLE
    if role:
        return role
    import sagemaker

    try:
        return sagemaker.get_execution_role(sagemaker_session=session)
    except Exception as err:  # any failure means the same thing to the user
        raise ModeUnavailable(
            "MODE='host' needs the ARN of an IAM role SageMaker can assume. Set ROLE_ARN in the "
            "parameters cell (e.g. arn:aws:iam::<account>:role/<SageMakerExecutionRole>); "
            f"finding it automatically only works on SageMaker notebooks ({err})") from err


# GPUs of the instance types the distributed notebooks suggest: SageMaker runs one process each.
GPUS_PER_INSTANCE = {"ml.p3.2xlarge": 1, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8,
                     "ml.p3dn.24xlarge": 8, "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8,
                     "ml.g5.12xlarge": 4, "ml.g5.48xlarge": 8}


def mpi_distribution(mode, instance_type, processes_per_host=None):
    """``{"mpi": ...}`` for Horovod: one process per GPU on SageMaker (host mode), one per
    simulated host in process mode and per CPU container in local mode, unless given."""
    if not processes_per_host:
        processes_per_host = GPUS_PER_INSTANCE.get(instance_type, 1) if mode == "host" else 1
    return {"mpi": {"enabled": True, "processes_per_host": int(processes_per_host)}}


# ------------------------------------------------------------------------------- inputs


def data_channels(mode, data_dir=DEFAULT_DATA_DIR):
    """{"train", "validation", "eval"} -> file:// URIs (process/local) or S3 URIs (host)."""
    check_mode(mode)
    data_dir = resolve(data_dir)
    if mode == "host":
        path = data_dir / CHANNELS_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run 1.0 with MODE='host' first; it "
                                    f"uploads the splits to S3 and records their URIs there.")
        uris = json.loads(path.read_text())
        missing = [split for split in SPLITS if split not in uris]
        if missing:
            raise ValueError(f"{path} has no URI for {missing}: run 1.0 with MODE='host' again.")
        return {split: uris[split] for split in SPLITS}
    missing = [split for split in SPLITS if not (data_dir / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"{data_dir} has no {missing} folder(s): run 1.0 first "
                                f"(DATA_DIR={str(data_dir)!r}).")
    return {split: f"file://{data_dir / split}" for split in SPLITS}


# ------------------------------------------------------------------------------- running


def check_mode_available(mode, role=None):
    """Raise ModeUnavailable naming what this machine lacks for ``mode``."""
    check_mode(mode)
    if mode == "local":
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


def check_aws(role):
    import boto3

    session = boto3.Session()
    if session.get_credentials() is None:
        raise ModeUnavailable("MODE='host' needs AWS credentials: run `aws configure`, set "
                              "AWS_PROFILE, or use a SageMaker notebook's role.")
    if not session.region_name:
        raise ModeUnavailable("MODE='host' needs an AWS region: set AWS_DEFAULT_REGION.")
    pick_role("host", role, make_session("host"))


def command_succeeds(command, timeout=20):
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run(estimator, inputs, mode, wait=True, logs=True, runs_dir=RUNS_DIR):
    """Train: fit() in host/local mode, process mode on this machine. Returns a JobResult.

    runs_dir: where job folders and downloaded artifacts go (tests point it elsewhere).
    """
    check_mode(mode)
    started = time.monotonic()
    if mode == "process":
        job = run_process_job(estimator, inputs, runs_dir=runs_dir,
                              stream=sys.stdout if logs else None)
        result = collect(mode, job.job_name, job.model_artifact, job.output_data_dir,
                         job.logs_path, started)
        return with_status(result, job.status, job.stop_reason, job.last_epoch)
    if mode == "local":
        return run_local(estimator, inputs, logs, started, Path(runs_dir))
    estimator.fit(inputs, wait=wait, logs=logs)
    job_name = estimator.latest_training_job.name
    if not wait:
        return JobResult(mode, job_name)
    job_dir = Path(runs_dir) / job_name
    model_tar, output_tar = download_artifacts(estimator, job_dir)
    output_dir = extract(output_tar, job_dir / "output")
    result = collect(mode, job_name, model_tar, output_dir, None, started)
    description = estimator.latest_training_job.describe()
    return with_status(result, description["TrainingJobStatus"],
                       description.get("SecondaryStatus"), None)


def run_local(estimator, inputs, logs, started, runs_dir):
    """Local mode copies artifacts straight into a file:// output_path: give it runs/<job>/."""
    from sagemaker.utils import name_from_base

    job_name = name_from_base(estimator.base_job_name or "tensorflow-training")
    job_dir = runs_dir / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    estimator.output_path = f"file://{job_dir}"
    estimator.fit(inputs, wait=True, logs=logs, job_name=job_name)
    model_tar = job_dir / "model.tar.gz"
    output_dir = extract(job_dir / "output.tar.gz", job_dir / "output")
    return collect("local", job_name, model_tar, output_dir, None, started)


def download_artifacts(estimator, job_dir):
    """model.tar.gz and output.tar.gz of a finished host job, into runs/<job>/."""
    from sagemaker.s3 import S3Downloader

    job_dir.mkdir(parents=True, exist_ok=True)
    model_uri = estimator.model_data
    output_uri = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"
    for uri in (model_uri, output_uri):
        S3Downloader.download(uri, str(job_dir), sagemaker_session=estimator.sagemaker_session)
    return job_dir / "model.tar.gz", job_dir / "output.tar.gz"


def extract(tar_path, folder):
    """Unpack output.tar.gz; local mode packs all of /opt/ml/output, so step into data/."""
    folder = Path(folder)
    if not tar_path.exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(folder, filter="data")
    nested = folder / "data"
    return nested if nested.is_dir() and not (folder / "metrics.json").exists() else folder


def collect(mode, job_name, model_tar, output_dir, logs_path, started):
    metrics = {}
    if output_dir and (Path(output_dir) / "metrics.json").exists():
        metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    return JobResult(mode=mode, job_name=job_name, model_artifact=model_tar,
                     output_dir=output_dir, metrics=metrics,
                     history=list(metrics.get("history", [])), logs_path=logs_path,
                     wall_seconds=round(time.monotonic() - started, 1))


def with_status(result, status, reason, last_epoch_logged):
    """``result`` with how the job ended; a Stopped job's last finished epoch comes from its
    metrics.json (the entry point saved on SIGTERM), else from its last epoch line."""
    result.status = status
    if status == "Stopped":
        result.stop_reason = reason
        result.stopped_after_epoch = result.metrics.get("stopped_after_epoch",
                                                        last_epoch_logged)
    return result


# ------------------------------------------------------------------------------- reporting


def headline(result):
    """The figures a notebook prints on its RESULT line."""
    metrics = result.metrics
    return {"mode": result.mode, "job_name": result.job_name,
            "eval_accuracy": metrics.get("eval_accuracy"), "epochs": metrics.get("epochs"),
            "workers": metrics.get("workers"), "images_per_sec": metrics.get("images_per_sec"),
            "epoch_seconds": metrics.get("epoch_seconds"), "wall_seconds": result.wall_seconds}


def save_result(notebook, result, runs_dir=None):
    """Remember a notebook's headline (runs/results/<notebook>.json) for later comparisons."""
    path = Path(runs_dir or RUNS_DIR) / "results" / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"notebook": notebook, **headline(result)})
    return path


def load_result(notebook, runs_dir=None):
    path = Path(runs_dir or RUNS_DIR) / "results" / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else None


def compare(baseline, result):
    """Print a small table: the single-process sibling's headline beside this run's."""
    current = headline(result)
    if baseline is None:
        print("No earlier single-process result in this runs folder: run its notebook first.")
        return None
    rows = [("mode", "mode", "{}"), ("workers", "workers", "{}"), ("epochs", "epochs", "{}"),
            ("eval accuracy", "eval_accuracy", "{:.4f}"), ("images/s", "images_per_sec", "{:.0f}"),
            ("s per epoch", "epoch_seconds", "{:.1f}"), ("wall time, s", "wall_seconds", "{:.0f}")]
    before = f"notebook {baseline.get('notebook', '?')}"
    print(f"{'':>14}  {before:>14}  {'this run':>14}")
    for label, key, fmt in rows:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for r in (baseline, current)]
        print(f"{label:>14}  {cells[0]:>14}  {cells[1]:>14}")
    speedup = (current.get("images_per_sec") or 0) / (baseline.get("images_per_sec") or 1)
    print(f"throughput ratio: {speedup:.2f}x")
    return speedup
