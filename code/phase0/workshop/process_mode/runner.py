"""Process mode: run a SageMaker TensorFlow Estimator's entry point on this machine.

``run_process_job(estimator, inputs)`` lays out ``runs/<job>/`` like ``/opt/ml`` in a training
container and starts the entry point with the variables and arguments that SageMaker's training
toolkit (sagemaker-training, inside the TensorFlow training image) would give it:

    runs/<job>/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json
              /input/data/<channel>      symlink to the local data
              /code/                     copy of source_dir (the entry point runs from here)
              /model/  /output/data/     -> packed into model.tar.gz / output.tar.gz at the end
              /output/success|failure    as the toolkit writes them
              /checkpoints               if the estimator has checkpoint_s3_uri (see below)
              /logs.txt                  everything the processes printed

Environment: every ``SM_*`` variable of ``sagemaker_training.environment.Environment
.to_env_vars()``, plus ``CURRENT_HOST``, ``SAGEMAKER_JOB_NAME``, ``SAGEMAKER_REGION`` (the toolkit
exports them), ``TRAINING_JOB_NAME`` (the platform does) and ``PYTHONUNBUFFERED`` (the image does);
argv is ``--key value`` per user hyperparameter, ``--model_dir <job>/model`` included.
tests/test_conformance.py runs a probe both here and under the real toolkit and compares.

Distribution, with simulated hosts algo-1..algo-N (N = instance_count) on this one machine:
  none                            one process.
  mpi / smdistributed.dataparallel one ``mpirun`` over N x P ranks, one MPMD app context per
                                  simulated host. P = ``processes_per_host`` if given, else 1
                                  (SageMaker's default is one per GPU; a CPU has none).
                                  Like SageMaker: ``mpi`` ranks all see algo-1's SM_* variables
                                  (the toolkit forwards the master's with ``mpirun -x NAME``);
                                  smdistributed ranks see their own host's.
  multi_worker_mirrored_strategy  one process per simulated host, each with its host's SM_*
                                  and the TF_CONFIG the TF image builds, on 127.0.0.1 and free
                                  ports.
If any process fails, the others are stopped at once and ``JobFailed`` is raised. All simulated
hosts share the one job folder, so entry points must write model/output from the chief only.

max_run, as SageMaker: at ``MaxRuntimeInSeconds`` SageMaker sends SIGTERM and ends the job 120 s
later, "so algorithms can use this window to save the model artifacts" (StoppingCondition, API
reference); the job ends ``Stopped`` (secondary status ``MaxRuntimeExceeded``), whatever
/opt/ml/model holds is uploaded as model.tar.gz, and the SDK's ``fit()`` only logs a warning
(``sagemaker.session._check_job_status``). Process mode does the same: SIGTERM to every process
of the job (``stop_grace`` s, default 120, then SIGKILL), status "Stopped", model.tar.gz packed
from the model folder, no ``output/failure`` (nothing fails; ``output/success`` only if every
process exited 0, as the toolkit writes it when the entry point returns 0), the SDK's warning
text as a ``JobStoppedWarning``. A failure (non-zero exit without a stop) raises JobFailed, and
an interrupt (KeyboardInterrupt) stops every process, writes output/failure and goes on.

StopTrainingJob, as SageMaker: a file ``runs/<job>/stop`` (``touch`` it from a terminal while a
notebook cell waits on the job), or the caller's ``stop_request`` event, stops the job the same
way; it ends ``Stopped`` with reason ``Stopped`` instead of ``MaxRuntimeExceeded``.

How SIGTERM reaches the entry point in a SageMaker image (read 2026-11): the platform signals
the container's PID 1, which is the toolkit's ``train`` (or the image's entry script running
it). sagemaker-training 5.1.4 installs no signal handler and does not forward SIGTERM to the
entry point or to mpirun (trainer.py, process.py, mpi.py; aws/sagemaker-training-toolkit issues
#125 and #173 and PR #126, open; aws/deep-learning-containers#632): there, an entry point may
never see the signal, and is SIGKILLed with the rest at the end of the window. Had the toolkit
forwarded it to mpirun, Open MPI 4.1 would give the ranks SIGTERM and SIGKILL them 1 s later
(``odls_base_sigkill_timeout``). Process mode gives the window to every process instead (to
the ranks directly, see supervisor.py): it runs the entry points as a forwarding toolkit would,
and what they save then is what a SageMaker job keeps only if the signal reaches them. What a
SageMaker job always keeps is the checkpoint of every finished epoch (checkpoint_s3_uri).

Checkpoints: SageMaker syncs /opt/ml/checkpoints with checkpoint_s3_uri. Here a ``file://`` URI
(or a local path) is that persistent place: ``<job>/checkpoints`` is a symlink to it, so running
the same estimator again resumes. An ``s3://`` URI gets a plain, unsynced folder.

This file is the job: layout and launch plans. What the toolkit computes (``SM_*``, argv) is in
toolkit_env.py; running, logging and stopping the processes in supervisor.py.
"""

import json
import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .. import RUNS_DIR
from ..files import free_ports, pack_folder, write_atomic, write_json_atomic
from ..log_format import parse_epoch_line
from ..progress import MaxRunProjection
from .supervisor import MAX_RUN_GRACE_SECONDS, LogSink, Proc, supervise
from .toolkit_env import (
    INSTANCE_GROUP,
    TOOLKIT_SAGEMAKER_HYPERPARAMETERS,
    OptMl,
    decode_hyperparameters,
    probe_machine,
    sm_env_vars,
    to_cmd_args,
    training_env,
)

DEFAULT_PROCESSES_PER_HOST = 1  # a simulated host has no GPUs to give one process each
# What sagemaker.session._check_job_status logs for a Stopped job (SDK 2.257.7), word for word.
SDK_STOPPED_WARNING = ("Job ended with status 'Stopped' rather than 'Completed'. "
                       "This could mean the job timed out or stopped early for some other "
                       "reason: Consider checking whether it completed as you expect.")


class JobStoppedWarning(UserWarning):
    """A job was stopped (max_run) rather than completed; its model.tar.gz holds what it saved."""


warnings.simplefilter("always", JobStoppedWarning)  # every stopped job, not only the first


class JobFailed(RuntimeError):
    """A process-mode job ended badly; the message quotes the last lines of its log."""

    def __init__(self, message, job_name, job_dir, exit_code, tail):
        super().__init__(message)
        self.job_name, self.job_dir = job_name, Path(job_dir)
        self.exit_code, self.tail = exit_code, list(tail)


@dataclass
class ProcessJob:
    job_name: str
    job_dir: Path
    model_artifact: Path
    output_artifact: Path
    output_data_dir: Path
    logs_path: Path
    wall_seconds: float
    launcher: str
    num_processes: int
    status: str = "Completed"          # or "Stopped" (max_run), as DescribeTrainingJob says
    stop_reason: str = None            # "MaxRuntimeExceeded" (SageMaker's secondary status)
    seconds_to_exit: float = None      # Stopped: from SIGTERM to the last process gone
    last_epoch: int = None             # the last epoch line in the log (None: none seen)


@dataclass
class JobSpec:
    """What process mode takes from the Estimator, in container terms."""
    job_name: str
    job_dir: Path
    source_dir: Path
    script: str
    hyperparameters: dict      # hyperparameters.json: every value JSON-encoded, as SageMaker sends
    hosts: list
    instance_type: str
    launcher: str              # single | mpi | smdistributed | mwms
    processes_per_host: int
    channels: dict             # channel -> local folder
    checkpoint_uri: str = None
    region: str = ""
    environment: dict = field(default_factory=dict)



# ----------------------------------------------------------------------------- public entry


def run_process_job(estimator, inputs, job_name=None, runs_dir=RUNS_DIR, stream=sys.stdout,
                    timeout=None, stop_grace=MAX_RUN_GRACE_SECONDS, on_line=None,
                    stop_request=None):
    """Run ``estimator``'s entry point here under the container contract; returns a ProcessJob.

    inputs: {channel: local folder or file:// URI} (a single value means channel "training").
    stream: where log lines go live (None: only to logs.txt).
    timeout: seconds; default the estimator's max_run, which is what stops a SageMaker job:
        then SIGTERM, ``stop_grace`` seconds, SIGKILL; the job ends "Stopped" (see above).
    on_line: called with every log line (e.g. a progress.EpochProgress bar).
    stop_request: a threading.Event; set, the job is stopped as at max_run (SageMaker's
        StopTrainingJob: status "Stopped", reason "Stopped"). A file runs/<job>/stop does the
        same (STOP_FILE).
    """
    started = time.monotonic()
    spec = describe_job(estimator, inputs, job_name, Path(runs_dir))
    procs = plan_processes(spec)  # before the folder exists: a missing mpirun leaves nothing
    paths = lay_out_job(spec)
    limit = timeout if timeout is not None else getattr(estimator, "max_run", None)
    processes = count_processes(spec)
    epochs = LastEpoch()
    projection = MaxRunProjection(limit, None, spec.job_name, started) if limit else None
    with LogSink(stream, paths.logs, hooks=[on_line, epochs, projection]) as log:
        if projection:
            projection.say = log.line
        log.line(f"process mode: job {spec.job_name} in {spec.job_dir} "
                 f"({spec.launcher}, {len(spec.hosts)} host(s), {processes} process(es))")
        try:
            outcome = supervise(procs, log, limit, label_lines=processes > 1,
                                processes_per_host=spec.processes_per_host, grace=stop_grace,
                                stop_request=StopRequest(stop_request,
                                                         spec.job_dir / STOP_FILE))
        except KeyboardInterrupt:
            write_atomic(os.path.join(paths.output, "failure"),
                         "interrupted (KeyboardInterrupt): every process was stopped\n")
            log.line(f"process mode: job {spec.job_name} interrupted; every process stopped")
            raise
        if outcome.status == "Failed":
            fail_job(spec, paths, log, outcome.what, outcome.exit_code)
        if outcome.exit_code == 0:
            write_atomic(os.path.join(paths.output, "success"), "")
        if outcome.status == "Stopped":
            log.line(f"process mode: job {spec.job_name} Stopped ({outcome.what}) after "
                     f"{time.monotonic() - started:.0f}s; model.tar.gz holds what the model "
                     f"folder holds")
    model_tar = pack_folder(paths.model, spec.job_dir / "model.tar.gz")
    output_tar = pack_folder(paths.output_data, spec.job_dir / "output.tar.gz")
    if outcome.status == "Stopped":
        warnings.warn(SDK_STOPPED_WARNING, JobStoppedWarning, stacklevel=2)
    return ProcessJob(spec.job_name, spec.job_dir, model_tar, output_tar, Path(paths.output_data),
                      Path(paths.logs), time.monotonic() - started, spec.launcher, processes,
                      status=outcome.status,
                      stop_reason=outcome.what if outcome.status == "Stopped" else None,
                      seconds_to_exit=outcome.seconds_to_exit, last_epoch=epochs.epoch)


STOP_FILE = "stop"  # runs/<job>/stop: StopTrainingJob for a job of this machine


class StopRequest:
    """Set when the caller's event is set or the job's stop file exists (from another
    process: a terminal, or a test waiting for the first epoch line)."""

    def __init__(self, event, path):
        self.event, self.path = event, path

    def is_set(self):
        return (self.event is not None and self.event.is_set()) or self.path.exists()


class LastEpoch:
    """Log hook: the number of the last epoch line seen."""

    def __init__(self):
        self.epoch = None

    def __call__(self, line):
        parsed = parse_epoch_line(line)
        if parsed:
            self.epoch = parsed.epoch


# ------------------------------------------------------------------- estimator -> JobSpec


def describe_job(estimator, inputs, job_name, runs_dir):
    from sagemaker.utils import name_from_base

    job_name = job_name or name_from_base(estimator.base_job_name or "tensorflow-training")
    job_dir = (runs_dir / job_name).resolve()
    if job_dir.exists():
        raise FileExistsError(f"job folder {job_dir} already exists: pass another job_name "
                              f"(or leave it None for a timestamped one)")
    source_dir, script = locate_code(estimator)
    hyperparameters = container_hyperparameters(estimator, job_name, OptMl(job_dir), script)
    decoded = decode_hyperparameters(hyperparameters)
    return JobSpec(
        job_name=job_name, job_dir=job_dir, source_dir=source_dir, script=script,
        hyperparameters=hyperparameters,
        hosts=[f"algo-{i + 1}" for i in range(int(estimator.instance_count or 1))],
        instance_type=str(estimator.instance_type),
        launcher=pick_launcher(estimator.distribution or {}),
        processes_per_host=int(decoded.get("sagemaker_mpi_num_of_processes_per_host")
                               or DEFAULT_PROCESSES_PER_HOST),
        channels=local_channels(inputs), checkpoint_uri=estimator.checkpoint_s3_uri,
        region=decoded["sagemaker_region"], environment=dict(estimator.environment or {}))


def container_hyperparameters(estimator, job_name, paths, script):
    """hyperparameters.json as SageMaker local mode would write it: every value JSON-encoded.

    User hyperparameters, the script-mode keys the SDK adds, the SDK's own translation of
    ``distribution`` and ``model_dir`` (here the job's model folder, as under MPI on SageMaker).
    """
    from sagemaker.estimator import Framework

    user = decode_hyperparameters(Framework.hyperparameters(estimator))  # no side effects
    user = {k: v for k, v in user.items() if not k.startswith("sagemaker_")}
    script_mode = {
        "sagemaker_submit_directory": paths.code,  # local mode points it at /opt/ml/code too
        "sagemaker_program": script,
        "sagemaker_container_log_level": estimator.container_log_level,
        "sagemaker_job_name": job_name,
        "sagemaker_region": estimator.sagemaker_session.boto_region_name or "",
    }
    framework = estimator._distribution_configuration(estimator.distribution or {})
    model_dir = {"model_dir": paths.model} if estimator.model_dir is not False else {}
    merged = {**user, **script_mode, **framework, **model_dir}
    return {key: json.dumps(value) for key, value in merged.items()}


def locate_code(estimator):
    """(source folder, entry point relative to it), as the SDK would upload them."""
    entry = estimator.entry_point
    if estimator.source_dir is None:
        path = Path(entry).resolve()
        return path.parent, path.name
    source = str(estimator.source_dir)
    if "://" in source:
        raise ValueError(f"process mode runs local code only; source_dir is {source!r}. "
                         f"Give the estimator a local source_dir.")
    source_dir = Path(source).resolve()
    if not (source_dir / entry).is_file():
        raise FileNotFoundError(f"entry point {entry!r} not found in source_dir {source_dir}")
    return source_dir, entry


def pick_launcher(distribution):
    enabled = {name for name, conf in distribution.items()
               if isinstance(conf, dict) and conf.get("enabled")}
    if distribution.get("smdistributed", {}).get("dataparallel", {}).get("enabled"):
        return "smdistributed"
    if "mpi" in enabled:
        return "mpi"
    if "multi_worker_mirrored_strategy" in enabled:
        return "mwms"
    unsupported = enabled - {"mpi", "multi_worker_mirrored_strategy"}
    if unsupported:
        raise ValueError(f"process mode cannot run distribution {sorted(unsupported)}; it runs "
                         f"none, mpi, smdistributed dataparallel or "
                         f"multi_worker_mirrored_strategy")
    return "single"


def local_channels(inputs):
    """{channel: existing local folder} from paths, file:// URIs or TrainingInput objects."""
    if inputs is None:
        return {}
    if not isinstance(inputs, dict):
        inputs = {"training": inputs}
    channels = {}
    for name, value in inputs.items():
        uri = value.config["DataSource"]["S3DataSource"]["S3Uri"] if hasattr(value, "config") \
            else str(value)
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise ValueError(f"channel {name!r}: process mode reads local data, got {uri!r}. "
                             f"Use data_channels('process', DATA_DIR) or a file:// URI.")
        folder = Path(parsed.netloc + parsed.path if parsed.scheme else uri).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"channel {name!r}: {folder} is not a folder. "
                                    f"Run 1.0.Download-Dataset first, or fix the path.")
        channels[name] = folder
    return channels


def count_processes(spec):
    if spec.launcher in ("mpi", "smdistributed"):
        return len(spec.hosts) * spec.processes_per_host
    return len(spec.hosts) if spec.launcher == "mwms" else 1


# ------------------------------------------------------------------------- job folder


def lay_out_job(spec):
    paths = OptMl(spec.job_dir)
    for folder in (paths.input_config, paths.input_data, paths.model, paths.output_data):
        os.makedirs(folder)
    shutil.copytree(spec.source_dir, paths.code,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    for name, folder in spec.channels.items():
        os.symlink(folder, os.path.join(paths.input_data, name), target_is_directory=True)
    # One resourceconfig.json on disk (algo-1's); each simulated host's own goes in its env.
    write_json_atomic(os.path.join(paths.input_config, "hyperparameters.json"),
                      spec.hyperparameters)
    write_json_atomic(os.path.join(paths.input_config, "resourceconfig.json"),
                      resource_config(spec, spec.hosts[0]))
    write_json_atomic(os.path.join(paths.input_config, "inputdataconfig.json"),
                      input_data_config(spec))
    if spec.checkpoint_uri:
        make_checkpoint_dir(spec.checkpoint_uri, paths.checkpoints)
    return paths


def resource_config(spec, host):
    """resourceconfig.json as SageMaker writes it on each host."""
    return {
        "current_host": host,
        "current_instance_type": spec.instance_type,
        "current_group_name": INSTANCE_GROUP,
        "hosts": list(spec.hosts),
        "instance_groups": [{"instance_group_name": INSTANCE_GROUP,
                             "instance_type": spec.instance_type, "hosts": list(spec.hosts)}],
        "network_interface_name": "eth0",
    }


def input_data_config(spec):
    return {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                   "RecordWrapperType": "None"} for name in spec.channels}


def make_checkpoint_dir(uri, link):
    parsed = urlparse(str(uri))
    if parsed.scheme == "s3":
        os.makedirs(link)  # nothing syncs it to S3 here
        return
    target = Path(parsed.netloc + parsed.path if parsed.scheme == "file" else str(uri))
    target.expanduser().mkdir(parents=True, exist_ok=True)
    os.symlink(target.expanduser().resolve(), link, target_is_directory=True)


def host_environment(spec, host, machine):
    """The full environment of an entry-point process on simulated ``host``."""
    paths = OptMl(spec.job_dir)
    env = training_env(spec.job_dir, spec.hyperparameters, resource_config(spec, host),
                       input_data_config(spec), spec.job_name, machine)
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("SM_", "OMPI_", "PMIX_")) and k != "TF_CONFIG"}
    hps = decode_hyperparameters(spec.hyperparameters)
    return {
        **inherited,
        **spec.environment,                      # the estimator's `environment=`
        "PYTHONUNBUFFERED": "1",                 # set by the TF training image
        "PYTHONPATH": os.pathsep.join(filter(None, [paths.code, os.environ.get("PYTHONPATH")])),
        "TRAINING_JOB_NAME": spec.job_name,      # set by the SageMaker platform
        "CURRENT_HOST": host,                    # the toolkit exports these three
        "SAGEMAKER_JOB_NAME": str(hps.get("sagemaker_job_name", "")),
        "SAGEMAKER_REGION": spec.region,
        **sm_env_vars(env),
    }


# -------------------------------------------------------------------------- launch plans


def plan_processes(spec):
    machine = probe_machine()
    args = to_cmd_args(decode_hyperparameters({
        k: v for k, v in spec.hyperparameters.items()
        if not (k in TOOLKIT_SAGEMAKER_HYPERPARAMETERS or k.startswith("sagemaker_"))}))
    if spec.launcher == "mwms":
        return plan_mwms(spec, machine, args)
    if spec.launcher in ("mpi", "smdistributed"):
        return [plan_mpirun(spec, machine, args)]
    # The toolkit runs `python -- <script> args` from the code folder.
    return [Proc("", [sys.executable, "--", spec.script, *args],
                 host_environment(spec, spec.hosts[0], machine))]


def plan_mwms(spec, machine, args):
    ports = free_ports(len(spec.hosts))
    workers = [f"127.0.0.1:{port}" for port in ports]
    procs = []
    for index, host in enumerate(spec.hosts):
        env = host_environment(spec, host, machine)
        # As the TF image's training.py builds it, with loopback addresses instead of algo-i.
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "environment": "cloud",
                                       "task": {"index": index, "type": "worker"}})
        procs.append(Proc(host, [sys.executable, "--", spec.script, *args], env))
    return procs


# Every rank runs on this machine's cores, so a rank waiting for the others yields its core
# instead of spinning, which Open MPI does unless it counts more ranks than slots
# (benchmarks/mpi_yield.py: a third less CPU for two Horovod ranks on two cores). SageMaker gives
# each host its own cores.
YIELD_WHEN_IDLE = ("-mca", "mpi_yield_when_idle", "1")


def plan_mpirun(spec, machine, args):
    mpirun = shutil.which("mpirun")
    if not mpirun:
        raise RuntimeError("process mode needs Open MPI's mpirun for mpi/smdistributed "
                           "distributions: apt-get install openmpi-bin")
    master = host_environment(spec, spec.hosts[0], machine)
    if spec.launcher == "smdistributed":
        flag = "SINGLENODE" if len(spec.hosts) == 1 else "HOMOGENEOUS"
        master[f"SMDATAPARALLEL_USE_{flag}"] = "1"
    hps = decode_hyperparameters(spec.hyperparameters)
    custom = hps.get("sagemaker_mpi_custom_mpi_options") or ""
    argv = [mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "--tag-output", "-mca", "orte_abort_on_non_zero_status", "1",
            "-mca", "pml", "ob1", "-mca", "btl", "^openib",
            "-mca", "btl_vader_single_copy_mechanism", "none", *YIELD_WHEN_IDLE,
            *shlex.split(str(custom))]
    for index, host in enumerate(spec.hosts):
        if index:
            argv.append(":")
        argv += ["-np", str(spec.processes_per_host)]
        # mpi: the toolkit's `-x NAME` gives every rank the master's values, so no overrides.
        if spec.launcher == "smdistributed":
            own = host_environment(spec, host, machine)
            for name, value in own.items():
                if master.get(name) != value:
                    argv += ["-x", f"{name}={value}"]
        # The toolkit runs `python -m mpi4py <script>`; mpi4py is optional here, argv is the same.
        argv += [sys.executable, spec.script, *args]
    return Proc("", argv, master)


def fail_job(spec, paths, log, what, code):
    tail = list(log.tail)
    write_atomic(os.path.join(paths.output, "failure"), f"{what}\n" + "\n".join(tail) + "\n")
    quoted = "\n".join("    " + line for line in tail[-20:])
    raise JobFailed(
        f"process-mode job {spec.job_name} failed: {what}.\nLast lines of its log:\n{quoted}\n"
        f"Full log: {paths.logs}. Fix the error above and run again (a new job folder is made).",
        spec.job_name, spec.job_dir, code, tail)


