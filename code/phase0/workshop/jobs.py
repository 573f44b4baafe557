"""The notebooks' mode-dependent values, and the result of a training job in every mode.

A training notebook writes its ``sagemaker.tensorflow.TensorFlow(...)`` call out in full; only
the values that differ between modes come from here, one helper per value:

    session = jobs.session_for(MODE)               # LocalSession (process, local) / Session (host)
    instance_type=jobs.instance_type_for(MODE, INSTANCE_TYPE, INSTANCE_COUNT)
    role=jobs.role_for(MODE, ROLE_ARN, session)
    checkpoint_s3_uri=jobs.checkpoint_uri_for(MODE, session, S3_BUCKET, "cifar10-train-keras")
    output_path=jobs.output_path_for(MODE, S3_BUCKET)
    use_spot_instances=jobs.spot_for(MODE, USE_SPOT)

then trains with ``estimator.fit(inputs)`` (local, host) or ``jobs.run_in_process(estimator,
inputs)`` (process), and reads ``jobs.result_of(estimator)`` / the JobResult run_in_process returns.

MODE:
  process  the entry point runs on this machine under the SageMaker container contract
           (process_mode.py); the Estimator is only read, never fit. No AWS, no Docker.
  local    SageMaker local mode: the SDK runs the TF training image with docker compose.
  host     a real SageMaker training job.

What must differ between modes (SDK v2, ``EstimatorBase._add_spot_checkpoint_args``): local
mode raises on ``checkpoint_s3_uri`` and on spot, so both are None/False there. Host mode
checkpoints to ``s3://<bucket>/<unique job-like name>/checkpoints`` (a spot-interrupted job
resumes, a new estimator starts afresh); process mode to ``file://<runs>/checkpoints/<name>``
(linked into the job folder, like SageMaker's sync). Local mode's artifacts go to
``runs/local-output/`` and result_of() moves them to ``runs/<job>/``, where every mode keeps them.
"""

import json
import logging
import os
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import DEFAULT_DATA_DIR, RUNS_DIR, SRC_DIR, audit, entry_points, images, instances, resolve
from .dataset import CHANNELS_NAME, SPLITS
from .environment import ModeUnavailable, check_mode, nvidia_gpu_present
from .log_format import METRIC_DEFINITIONS  # noqa: F401  (notebooks use jobs.METRIC_DEFINITIONS)
from .process_mode.runner import run_process_job
from .records import headline

# Harmless for everyone: silences the SDK v2 deprecation banner printed at import, and the
# SDK's "Not applying SDK defaults from location ..." notices on every Estimator.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)

DEFAULT_HOST_INSTANCE = "ml.g5.xlarge"  # one A10G GPU; P3 is retired
DEFAULT_REGION = "us-east-1"  # process/local only name images with it; nothing is called
# Never used to call AWS: process and local mode only need the Estimator to have a role.
OFFLINE_ROLE = "arn:aws:iam::111111111111:role/workshop-offline-no-aws"
OFFLINE_BUCKET = "workshop-offline-no-aws"  # process/local sessions: never created or used
LOCAL_OUTPUT = "local-output"  # local mode's output_path under runs/



@dataclass
class JobResult:
    """The same for all modes."""
    mode: str
    job_name: str
    model_artifact: Optional[Path] = None   # local model.tar.gz
    output_dir: Optional[Path] = None       # output.tar.gz's contents (metrics.json, tensorboard/)
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    logs_path: Optional[Path] = None        # process mode; host/local logs stream to stdout
    wall_seconds: float = 0.0               # process: measured here; local/host: the job's own
    instance_type: str = ""
    instance_count: int = 1
    spot: bool = False
    training_seconds: Optional[int] = None  # host: TrainingTimeInSeconds
    billable_seconds: Optional[int] = None  # host: BillableTimeInSeconds (spot savings included)
    status: str = "Completed"               # or "Stopped": max_run reached (DescribeTrainingJob)
    stop_reason: Optional[str] = None       # "MaxRuntimeExceeded" (SageMaker's secondary status)
    stopped_after_epoch: Optional[int] = None  # Stopped: the last finished epoch


# ------------------------------------------------------------ mode-dependent Estimator values


def session_for(mode, bucket=None):
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
    # TensorFlowModel.deploy/transformer ask for the default bucket even when nothing is uploaded
    # (file:// model, no entry point); the SDK would ask STS and S3 for it: name one, offline.
    session._default_bucket = OFFLINE_BUCKET
    return session


def instance_type_for(mode, instance_type, instance_count=1):
    """host: the notebook's INSTANCE_TYPE; local: "local" or "local_gpu"; process: "local"."""
    check_mode(mode)
    if mode == "host":
        return instance_type or DEFAULT_HOST_INSTANCE
    # The SDK refuses local_gpu with more than one instance ("Distributed Training in Local GPU
    # is not supported"), so multi-instance local jobs run on CPU containers.
    if mode == "local" and instance_count == 1 and nvidia_gpu_present():
        return "local_gpu"
    return "local"  # process mode: only read, never fit


def role_for(mode, role_arn, session):
    """host: ROLE_ARN, or this notebook instance's execution role; else a placeholder ARN."""
    check_mode(mode)
    if mode != "host":
        return role_arn or OFFLINE_ROLE
    if role_arn:
        return role_arn
    import sagemaker

    try:
        return sagemaker.get_execution_role(sagemaker_session=session)
    except Exception as err:  # any failure means the same thing to the user
        raise ModeUnavailable(
            "MODE='host' needs the ARN of an IAM role SageMaker can assume. Set ROLE_ARN in the "
            "parameters cell (e.g. arn:aws:iam::<account>:role/<SageMakerExecutionRole>); "
            f"finding it automatically only works on SageMaker notebooks ({err})") from err


def checkpoint_uri_for(mode, session, bucket, base_job_name, resume_from=""):
    """A fresh checkpoint location per estimator; None in local mode (the SDK refuses one).

    resume_from: an earlier job's name (RESUME_FROM): its checkpoint location instead, so the
    new job resumes after that job's last finished epoch (workshop/resume.py)."""
    from sagemaker.utils import name_from_base

    check_mode(mode)
    if resume_from:
        from .resume import checkpoint_to_resume

        return checkpoint_to_resume(mode, resume_from, session=session)
    unique_name = name_from_base(base_job_name)
    if mode == "host":
        return f"s3://{bucket or session.default_bucket()}/{unique_name}/checkpoints"
    if mode == "process":
        return f"file://{RUNS_DIR / 'checkpoints' / unique_name}"
    return None


def output_path_for(mode, bucket):
    """host: s3://<S3_BUCKET>/ (None: the session's default bucket); local: a folder here."""
    check_mode(mode)
    if mode == "host":
        return f"s3://{bucket}/" if bucket else None
    if mode == "local":
        # Local mode copies model.tar.gz/output.tar.gz straight into a file:// output_path;
        # result_of() moves them on to runs/<job>/.
        return f"file://{RUNS_DIR / LOCAL_OUTPUT}"
    return None  # process mode packs the artifacts in runs/<job>/ itself


def spot_for(mode, use_spot):
    """Managed spot training is a host-mode thing: local mode raises on it, process ignores it."""
    return bool(use_spot) and check_mode(mode) == "host"


def image_for(instance_type, session, gpu, cpu):
    """The URI of the ``gpu`` tag for a GPU instance type (or "local_gpu"), else of ``cpu``
    (also for None: a serverless endpoint), in the registry of the session's region: what
    ``image_uri=`` takes when the SDK cannot name the image itself (SDK v2 knows no TensorFlow
    image newer than 2.19)."""
    region = session.boto_region_name
    if instance_type is None:
        use_gpu = False
    elif instance_type.startswith("local"):
        use_gpu = instance_type == "local_gpu"
    else:
        use_gpu = instances.gpus(instance_type, region) > 0
    return images.uri(gpu if use_gpu else cpu, region)


def processes_per_host_for(mode, instance_type, processes_per_host=0):
    """Horovod's processes per host: one per GPU on SageMaker (host mode; a type whose GPUs
    nobody knows is an error, see instances.py), one per simulated host in process mode and
    per CPU container in local mode; a nonzero value wins."""
    check_mode(mode)
    if processes_per_host:
        return int(processes_per_host)
    if mode != "host":
        return 1
    return instances.processes_per_host(instance_type or DEFAULT_HOST_INSTANCE)


def workshop_estimator(mode, script, hyperparameters, instance_type=None, instance_count=1,
                       role_arn=None, bucket=None, use_spot=False, max_run=3600,
                       processes_per_host=0, checkpoint=True, session=None):
    """The Estimator the notebook of ``script`` builds, from the registry: for benchmarks and
    tests (the notebooks write theirs out; a test checks both send the same request)."""
    from sagemaker.tensorflow import TensorFlow

    entry = entry_points.entry_point(script)
    session = session or session_for(mode, bucket)
    distribution = entry_points.distribution_for(
        entry, processes_per_host_for(mode, instance_type, processes_per_host))
    instance_type = instance_type_for(mode, instance_type, instance_count)
    image_uri = image_for(instance_type, session, *entry.image_tags) if entry.image_tags else None
    return TensorFlow(
        entry_point=entry.script, source_dir=str(SRC_DIR), image_uri=image_uri,
        framework_version=entry.framework_version, py_version=entry.py_version,
        instance_type=instance_type, instance_count=instance_count, distribution=distribution,
        role=role_for(mode, role_arn, session), sagemaker_session=session,
        hyperparameters=dict(hyperparameters), metric_definitions=METRIC_DEFINITIONS,
        checkpoint_s3_uri=(checkpoint_uri_for(mode, session, bucket, entry.base_job_name)
                           if checkpoint else None),
        output_path=output_path_for(mode, bucket),
        use_spot_instances=spot_for(mode, use_spot), max_run=max_run,
        max_wait=2 * max_run if spot_for(mode, use_spot) else None,
        base_job_name=entry.base_job_name, disable_profiler=True,
        tags=audit.tags_for(entry.notebook))


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


def run_in_process(estimator, inputs, runs_dir=RUNS_DIR, logs=True):
    """Process mode: the estimator's entry point on this machine, under the container's contract
    (process_mode.py), with a progress bar. Returns the JobResult; a job stopped at max_run
    returns too (status "Stopped", with the SDK's warning). runs_dir: where job folders go."""
    from .progress import EpochProgress

    started = time.monotonic()
    with EpochProgress(estimator.base_job_name or "job") as bar:
        job = run_process_job(estimator, inputs, runs_dir=runs_dir,
                              stream=sys.stdout if logs else None, on_line=bar)
    result = collect(estimator, "process", job.job_name, job.model_artifact, job.output_data_dir,
                     wall_seconds=time.monotonic() - started, logs_path=job.logs_path)
    return with_status(result, job.status, job.stop_reason, job.last_epoch)


def result_of(estimator, runs_dir=RUNS_DIR):
    """The JobResult of the estimator's last ``fit()`` (local or host mode, waited for): its
    artifacts copied to runs/<job>/, metrics.json, the job's own times and how it ended."""
    if estimator.latest_training_job is None:
        raise ValueError("result_of() reads a finished job: call estimator.fit(inputs) first.")
    job_name = estimator.latest_training_job.name
    described = estimator.latest_training_job.describe()
    local = bool(getattr(estimator.sagemaker_session, "local_mode", False))
    job_dir = Path(runs_dir) / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    if local:
        model_tar, output_tar = move_local_artifacts(estimator.model_data, job_dir)
    else:
        model_tar, output_tar = download_artifacts(estimator, job_dir)
    started, ended = described.get("TrainingStartTime"), described.get("TrainingEndTime")
    result = collect(estimator, "local" if local else "host", job_name, model_tar,
                     extract(output_tar, job_dir / "output"),
                     wall_seconds=(ended - started).total_seconds() if started and ended else 0.0,
                     training_seconds=described.get("TrainingTimeInSeconds"),
                     billable_seconds=described.get("BillableTimeInSeconds"))
    return with_status(result, described.get("TrainingJobStatus", "Completed"),
                       described.get("SecondaryStatus"), None)


def move_local_artifacts(model_uri, job_dir):
    """Local mode wrote model.tar.gz and output.tar.gz to output_path: move them to runs/<job>/."""
    folder = Path(model_uri[len("file://"):]).parent
    for name in ("model.tar.gz", "output.tar.gz"):
        if (folder / name).exists():
            shutil.move(str(folder / name), str(job_dir / name))
    return job_dir / "model.tar.gz", job_dir / "output.tar.gz"


def download_artifacts(estimator, job_dir):
    """model.tar.gz and output.tar.gz of a finished host job, into runs/<job>/."""
    from sagemaker.s3 import S3Downloader

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


def collect(estimator, mode, job_name, model_tar, output_dir, wall_seconds, logs_path=None,
            training_seconds=None, billable_seconds=None):
    metrics = {}
    if output_dir and (Path(output_dir) / "metrics.json").exists():
        metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    return JobResult(mode=mode, job_name=job_name, model_artifact=model_tar,
                     output_dir=output_dir, metrics=metrics,
                     history=list(metrics.get("history", [])), logs_path=logs_path,
                     wall_seconds=round(wall_seconds, 1),
                     instance_type=str(estimator.instance_type),
                     instance_count=int(estimator.instance_count or 1),
                     spot=bool(estimator.use_spot_instances),
                     training_seconds=training_seconds, billable_seconds=billable_seconds)


def with_status(result, status, reason, last_epoch_logged):
    """``result`` with how the job ended; a Stopped job's last finished epoch comes from its
    metrics.json (the entry point saw SIGTERM and saved), else from its last epoch line, else
    (a host job killed at max_run writes no metrics.json) from the model it last exported."""
    result.status = status
    if status == "Stopped":
        from .serving.inference import exported_epoch

        result.stop_reason = reason
        result.stopped_after_epoch = result.metrics.get("stopped_after_epoch",
                                                        last_epoch_logged)
        if result.stopped_after_epoch is None and result.model_artifact:
            result.stopped_after_epoch = exported_epoch(result.model_artifact)
    return result


# ------------------------------------------------------------------------------- reporting


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
