"""Notebook 6.0's plumbing for SageMaker Python SDK v3 (ModelTrainer): the mode-dependent values,
the job's log, and its result in the same JobResult the v2 notebooks use.

Runs in the v3 kernel (.venv-sdk3): it imports only workshop modules that load without SDK v2
(jobs, dataset, files, log_format; no TensorFlow either), and v3 inside functions.

  local  ModelTrainer(training_mode=Mode.LOCAL_CONTAINER): v3's driver scripts in the training
         image, started with docker compose (algo-1..N); artifacts in ``local_container_root``.
  host   a real SageMaker training job (Mode.SAGEMAKER_TRAINING_JOB).
There is no process mode: v3's drivers (sm_train.sh, basic/MPI drivers) expect a container's
/opt/ml and, for MPI, sshd between hosts, so v3 needs Docker or AWS.
"""

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from . import RUNS_DIR, audit, budget, environment, images, instances, jobs, resolve
from .environment import ModeUnavailable

V3_MODES = ("local", "host")
LOCAL_INSTANCE_TYPE = "local_cpu"  # v3's name; "local_gpu" for GPUs
REGION_DEFAULT = jobs.DEFAULT_REGION
# What the drivers print: the command they run, and the interface local mode names.
COMMAND_LINE = re.compile(r"Executing command: (.*)")
RANK_LINE = re.compile(r"(rank|worker) (\d+)/(\d+): trained on \d+ records/epoch "
                       r"\(shard (\d+) of \d+\), weights fingerprint ([0-9a-f]{8})")


def v3_start(mode, data_dir):
    """Check that MODE can run v3 here (ModeUnavailable says what is missing); the data folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # v3's own ModelTrainer imports its deprecated configs shim: not the learner's to fix.
    import warnings
    warnings.filterwarnings("ignore", message="sagemaker.train.configs has been moved")
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    if mode not in V3_MODES:
        raise ModeUnavailable(
            f"MODE={mode!r}: SDK v3 runs its driver scripts inside the training container, so "
            f"it needs Docker (MODE='local') or AWS (MODE='host'); there is no process mode.")
    if mode == "local":
        environment.check_docker()
    else:
        import boto3

        session = boto3.Session()
        if session.get_credentials() is None or not session.region_name:
            raise ModeUnavailable("MODE='host' needs AWS credentials and a region (`aws "
                                  "configure`, AWS_PROFILE, AWS_DEFAULT_REGION).")
    return resolve(data_dir)


def region():
    import boto3

    return boto3.Session().region_name or REGION_DEFAULT


def v3_session_for(mode, bucket=""):
    """host: a v3 Session (its default bucket, or S3_BUCKET); local: None (nothing is uploaded)."""
    if mode != "host":
        return None
    import boto3
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=boto3.Session(), default_bucket=bucket or None)


def v3_role_for(mode, role_arn):
    """host: ROLE_ARN, else v3's lookup of this notebook's role (None lets ModelTrainer look)."""
    return (role_arn or None) if mode == "host" else None


def v3_instance_type_for(mode, instance_type):
    """host: INSTANCE_TYPE; local: v3's "local_cpu" (multi-container jobs run on CPUs)."""
    return instance_type if mode == "host" else LOCAL_INSTANCE_TYPE


def v3_image_for(mode, instance_type, gpu, cpu):
    """The URI of the ``gpu`` tag on a GPU instance in host mode, else of ``cpu`` (v3's local
    containers run on CPUs here), in this region's registry: for the images v3's
    ``image_uris.retrieve`` does not know (TF 2.21 training, TF Serving 2.20)."""
    use_gpu = mode == "host" and instances.gpus(instance_type, region()) > 0
    return images.uri(gpu if use_gpu else cpu, region())


def v3_tags_for(notebook):
    """The workshop's tags (audit.tags_for) as v3's Tag objects, for ModelTrainer and the
    Model, EndpointConfig and Endpoint resources, so 4.1's and 5.0's audit finds them."""
    from sagemaker.core.shapes import Tag

    return [Tag(key=tag["Key"], value=tag["Value"]) for tag in audit.tags_for(notebook)]


def check_budget(mode, instance_type, instance_count, max_run, spot, max_cost_usd):
    """host: the budget guard before a v3 training job is created (worst case, price, quota;
    raises over MAX_COST_USD); local: nothing is billed."""
    if mode != "host":
        print(f"MODE={mode!r}: containers on this machine, nothing is billed")
        return None
    import boto3

    session = boto3.Session()
    return budget.check_training_job(instance_type, instance_count, max_run, spot,
                                     session.region_name, max_cost_usd, session)


def score_endpoint(endpoint, data_dir, count=16):
    """Send ``count`` eval images to a v3 Endpoint; the share it classifies right."""
    images, labels = eval_images(data_dir, count=count)
    response = endpoint.invoke(body=json.dumps({"instances": images.tolist()}),
                               content_type="application/json")
    predictions = json.loads(response.body.read())["predictions"]
    return float(sum(p["class_id"] == int(label) for p, label in zip(predictions, labels))
                 / len(labels))


def image_instance_type(mode, instance_type):
    """The instance type to give image_uris.retrieve: v3's retrieve maps "local_cpu" to the GPU
    image (it knows only v2's "local"), so local mode asks for a CPU instance's image."""
    return instance_type if mode == "host" else "ml.c5.xlarge"


def v3_spot_for(mode, use_spot):
    return bool(use_spot) and mode == "host"


def checkpoint_for(mode, session, bucket, base_job_name):
    """host: a CheckpointConfig under the bucket; local: None (v3's local container has no
    checkpoint sync: it would ignore one)."""
    if mode != "host":
        return None
    from sagemaker.core.common_utils import name_from_base
    from sagemaker.core.training.configs import CheckpointConfig

    bucket = bucket or session.default_bucket()
    return CheckpointConfig(s3_uri=f"s3://{bucket}/{name_from_base(base_job_name)}/checkpoints")


def local_root(mode, base_job_name):
    """local: a fresh folder under runs/ for the job (v3's default is the kernel's working
    directory at import, which would put job folders next to the notebooks); host: None."""
    if mode != "host":
        folder = RUNS_DIR / "v3-local" / f"{base_job_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)
    return os.getcwd()


def channels(mode, data_dir):
    """{"train", "validation", "eval"} -> local folders (local) or 1.0's S3 URIs (host)."""
    found = jobs.data_channels(mode, data_dir)
    return {split: uri[len("file://"):] if uri.startswith("file://") else uri
            for split, uri in found.items()}


def metric_definitions():
    """The v2 notebooks' metric regexes as v3 MetricDefinition objects."""
    from sagemaker.core.training.configs import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in jobs.METRIC_DEFINITIONS]


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text):
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


class JobLog:
    """What a local job printed (the containers' output, which v3 writes to sys.stdout)."""

    def __init__(self):
        self.text, self.error, self.seconds = "", None, 0.0

    def commands(self):
        """The commands v3's driver ran (python ... or mpirun ...)."""
        return sorted(set(COMMAND_LINE.findall(self.text)))

    def ranks(self):
        """[(index, size, fingerprint)] of the processes that finished training."""
        return sorted((int(m[1]), int(m[2]), m[4]) for m in RANK_LINE.findall(self.text))


@contextlib.contextmanager
def job_log(expect_failure=False):
    """Echo and keep what the job prints. With expect_failure, a failed local job is recorded
    in ``log.error`` instead of raising (a cell that shows a gap)."""
    log, tee, started = JobLog(), _Tee(sys.stdout), time.monotonic()
    try:
        with contextlib.redirect_stdout(tee):
            yield log
    except RuntimeError as err:
        if not expect_failure:
            raise
        log.error = str(err)
    finally:
        log.text = "".join(tee.parts)
        log.seconds = round(time.monotonic() - started, 1)


def mpi_summary(log, instance_count, per_node):
    """What v3's MPI driver ran and how many ranks finished training, beside what v2's toolkit
    would run (-np = processes per host x hosts)."""
    mpirun = [command for command in log.commands() if command.startswith("mpirun")]
    hosts_np = re.search(r"--host (\S+) -np (\d+)", mpirun[0]) if mpirun else None
    interface = re.search(r"btl_tcp_if_include (\S+)", mpirun[0]) if mpirun else None
    refused = re.search(r"None of the TCP networks specified.*?Value given: (\S+)", log.text,
                        re.S)
    return {"instances": instance_count, "process_count_per_node": per_node,
            "mpirun_hosts": hosts_np.group(1) if hosts_np else None,
            "mpirun_np": int(hosts_np.group(2)) if hosts_np else None,
            "v2_np": instance_count * per_node,
            "interface": interface.group(1) if interface else None,
            "interface_refused": refused.group(1) if refused else None,
            "ranks_finished": len(log.ranks()), "job_failed": log.error is not None}


def v3_result_of(trainer, mode, log):
    """The JobResult of the trainer's last train(): artifacts in runs/<job>/, metrics.json."""
    if mode == "host":
        return _host_result(trainer)
    root = Path(trainer.local_container_root)
    names = re.findall(r'"job_name": "([^"]+)"', log.text)
    job_name = names[-1] if names else root.name
    job_dir = RUNS_DIR / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.tar.gz", "output.tar.gz"):
        shutil.move(str(root / "compressed_artifacts" / name), str(job_dir / name))
    output_dir = jobs.extract(job_dir / "output.tar.gz", job_dir / "output")
    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    return jobs.JobResult(
        mode="local", job_name=job_name, model_artifact=job_dir / "model.tar.gz",
        output_dir=output_dir, metrics=metrics, history=list(metrics.get("history", [])),
        wall_seconds=log.seconds, instance_type=trainer.compute.instance_type,
        instance_count=trainer.compute.instance_count)


def _host_result(trainer):
    from sagemaker.core.s3 import S3Downloader

    job = trainer._latest_training_job  # v3 keeps it private; ModelTrainer has no public getter
    job.refresh()
    job_dir = RUNS_DIR / job.training_job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    model_uri = job.model_artifacts.s3_model_artifacts
    for uri in (model_uri, model_uri.rsplit("/", 1)[0] + "/output.tar.gz"):
        S3Downloader.download(uri, str(job_dir), sagemaker_session=trainer.sagemaker_session)
    output_dir = jobs.extract(job_dir / "output.tar.gz", job_dir / "output")
    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    started, ended = job.training_start_time, job.training_end_time
    return jobs.JobResult(
        mode="host", job_name=job.training_job_name, model_artifact=job_dir / "model.tar.gz",
        output_dir=output_dir, metrics=metrics, history=list(metrics.get("history", [])),
        wall_seconds=(ended - started).total_seconds() if started and ended else 0.0,
        instance_type=trainer.compute.instance_type,
        instance_count=trainer.compute.instance_count,
        spot=bool(trainer.compute.enable_managed_spot_training),
        training_seconds=job.training_time_in_seconds,
        billable_seconds=job.billable_time_in_seconds)


def eval_images(data_dir, count=16):
    """(images uint8 (n, 32, 32, 3), labels): the first ``count`` test images of the archive 1.0
    downloaded, read with numpy (this kernel has no TensorFlow to read the TFRecords)."""
    import tarfile
    import tempfile

    from .dataset import load_batch

    archive = next((resolve(data_dir) / "download").glob("*.tar.gz"))
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as folder:
        member = next(m for m in tar.getmembers() if m.name.endswith("/test_batch"))
        path = Path(folder) / "test_batch"
        path.write_bytes(tar.extractfile(member).read())
        images, labels = load_batch(path)
    return images[:count], labels[:count]
