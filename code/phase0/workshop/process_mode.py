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

Checkpoints: SageMaker syncs /opt/ml/checkpoints with checkpoint_s3_uri. Here a ``file://`` URI
(or a local path) is that persistent place: ``<job>/checkpoints`` is a symlink to it, so running
the same estimator again resumes. An ``s3://`` URI gets a plain, unsynced folder.
"""

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from . import RUNS_DIR

# --- constants copied from sagemaker_training (params.py / environment.py, 5.1.4) ---
TOOLKIT_SAGEMAKER_HYPERPARAMETERS = (
    "sagemaker_program", "sagemaker_submit_directory", "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region", "sagemaker_container_log_level", "sagemaker_job_name",
    "default_user_module_name", "_tuning_objective_metric", "sagemaker_s3_output",
)
DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled", "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled", "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled", "sagemaker_torch_distributed_enabled",
)
INSTANCE_GROUP = "homogeneousCluster"
# The TF training image sets SAGEMAKER_TRAINING_MODULE to this; the toolkit reports it as
# SM_FRAMEWORK_MODULE.
TF_TRAINING_MODULE = "sagemaker_tensorflow_container.training:main"

DEFAULT_PROCESSES_PER_HOST = 1  # a simulated host has no GPUs to give one process each
TAIL_LINES = 40
STOP_GRACE_SECONDS = 5
MPI_TAG = re.compile(r"^\[\d+,(\d+)\]<(?:stdout|stderr)>:(.*)$")
MPI_EMPTY_TAG = re.compile(r"\[\d+,\d+\]<(?:stdout|stderr)>:$")  # mpirun tags a rank's EOF too


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


class OptMl:
    """The /opt/ml folders, rooted at a job folder (the toolkit's environment.py names)."""

    def __init__(self, base):
        self.base = str(base)
        self.code = os.path.join(self.base, "code")
        self.model = os.path.join(self.base, "model")
        self.input = os.path.join(self.base, "input")
        self.input_config = os.path.join(self.input, "config")
        self.input_data = os.path.join(self.input, "data")
        self.output = os.path.join(self.base, "output")
        self.output_data = os.path.join(self.output, "data")
        self.output_intermediate = os.path.join(self.output, "intermediate")
        self.checkpoints = os.path.join(self.base, "checkpoints")
        self.logs = os.path.join(self.base, "logs.txt")


# ----------------------------------------------------------------------------- public entry


def run_process_job(estimator, inputs, job_name=None, runs_dir=RUNS_DIR, stream=sys.stdout,
                    timeout=None):
    """Run ``estimator``'s entry point here under the container contract; returns a ProcessJob.

    inputs: {channel: local folder or file:// URI} (a single value means channel "training").
    stream: where log lines go live (None: only to logs.txt).
    timeout: seconds; default the estimator's max_run, which is what stops a SageMaker job.
    """
    started = time.monotonic()
    spec = describe_job(estimator, inputs, job_name, Path(runs_dir))
    procs = plan_processes(spec)  # before the folder exists: a missing mpirun leaves nothing
    paths = lay_out_job(spec)
    limit = timeout if timeout is not None else getattr(estimator, "max_run", None)
    processes = count_processes(spec)
    with LogSink(stream, paths.logs) as log:
        log.line(f"process mode: job {spec.job_name} in {spec.job_dir} "
                 f"({spec.launcher}, {len(spec.hosts)} host(s), {processes} process(es))")
        failure = supervise(procs, log, limit, label_lines=processes > 1,
                            processes_per_host=spec.processes_per_host)
        if failure:
            fail_job(spec, paths, log, *failure)
        write_atomic(os.path.join(paths.output, "success"), "")
    model_tar = pack_folder(paths.model, spec.job_dir / "model.tar.gz")
    output_tar = pack_folder(paths.output_data, spec.job_dir / "output.tar.gz")
    return ProcessJob(spec.job_name, spec.job_dir, model_tar, output_tar, Path(paths.output_data),
                      Path(paths.logs), time.monotonic() - started, spec.launcher, processes)


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


def decode_hyperparameters(encoded):
    """JSON-decode each value where possible, like the toolkit's read_hyperparameters()."""
    decoded = {}
    for key, value in encoded.items():
        try:
            decoded[key] = json.loads(value)
        except (ValueError, TypeError):
            decoded[key] = value
    return decoded


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


# ------------------------------------------------------- the toolkit's environment, replayed


@dataclass(frozen=True)
class Machine:
    num_cpus: int
    num_gpus: int
    num_neurons: int
    smddprun: bool
    smddpmprun: bool


def probe_machine():
    """What the toolkit measures about the instance (environment.num_cpus/num_gpus/...)."""
    return Machine(os.cpu_count() or 1, count_devices(["nvidia-smi", "--list-gpus"], "GPU "),
                   count_neuron_cores(), shutil.which("smddprun") is not None,
                   shutil.which("smddpmprun") is not None)


def count_devices(command, prefix):
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith(prefix))


def count_neuron_cores():
    try:
        out = subprocess.run(["neuron-ls", "-j"], capture_output=True, text=True, check=True,
                             timeout=30)
        return sum(item.get("nc_count", 0) for item in json.loads(out.stdout))
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def training_env(base, hyperparameters, resource, input_data, job_name, machine):
    """dict(sagemaker_training.environment.Environment()): what SM_TRAINING_ENV holds."""
    paths = OptMl(base)
    hps = decode_hyperparameters(hyperparameters)
    sagemaker = {k: v for k, v in hps.items()
                 if k in TOOLKIT_SAGEMAKER_HYPERPARAMETERS or k.startswith("sagemaker_")}
    framework = {k: v for k, v in sagemaker.items() if k not in TOOLKIT_SAGEMAKER_HYPERPARAMETERS}
    group = resource.get("current_group_name", INSTANCE_GROUP)
    groups = resource.get("instance_groups", [])
    distributed = any(framework.get(flag) for flag in DISTRIBUTION_FLAGS)
    dist_groups = framework.get("sagemaker_distribution_instance_groups",
                                [group] if distributed else [])
    dist_hosts = ([h for g in groups if g["instance_group_name"] in dist_groups
                   for h in g["hosts"]] if groups else list(resource["hosts"]))
    master = dist_hosts[0] if dist_hosts else resource["hosts"][0]
    program = sagemaker.get("sagemaker_program")
    return {
        "additional_framework_parameters": framework,
        "channel_input_dirs": {c: os.path.join(paths.input_data, c) for c in input_data},
        "current_host": resource["current_host"],
        "current_instance_group": group,
        "current_instance_group_hosts": next(
            (g["hosts"] for g in groups if g["instance_group_name"] == group), []),
        "current_instance_type": resource.get("current_instance_type", "local"),
        "distribution_hosts": dist_hosts,
        "distribution_instance_groups": dist_groups,
        "framework_module": TF_TRAINING_MODULE,
        "hosts": resource["hosts"],
        "hyperparameters": {k: v for k, v in hps.items() if k not in sagemaker},
        "input_config_dir": paths.input_config,
        "input_data_config": input_data,
        "input_dir": paths.input,
        "instance_groups": [g["instance_group_name"] for g in groups],
        "instance_groups_dict": {g["instance_group_name"]: g for g in groups},
        "is_hetero": len(groups) > 1,
        "is_master": resource["current_host"] == master,
        "is_modelparallel_enabled": None,  # read from SM_HP_MP_PARAMETERS before it is set
        "is_smddpmprun_installed": machine.smddpmprun,
        "is_smddprun_installed": machine.smddprun,
        "job_name": job_name,
        "log_level": sagemaker.get("sagemaker_container_log_level", logging.INFO),
        "master_hostname": master,
        "model_dir": paths.model,
        "module_dir": str(sagemaker.get("sagemaker_submit_directory", paths.code)),
        "module_name": program[:-3] if program and program.endswith(".py") else str(program),
        "network_interface_name": resource.get("network_interface_name", "eth0"),
        "num_cpus": machine.num_cpus,
        "num_gpus": machine.num_gpus,
        "num_neurons": machine.num_neurons,
        "output_data_dir": paths.output_data,
        "output_dir": paths.output,
        "output_intermediate_dir": paths.output_intermediate,
        "resource_config": resource,
        "topology": resource.get("topology", []),
        "user_entry_point": program,
    }


def sm_env_vars(env):
    """Environment.to_env_vars(): the SM_* variables the entry point sees."""
    mapping = {key: env[key] for key in (
        "hosts", "network_interface_name", "user_entry_point", "resource_config",
        "input_data_config", "output_data_dir", "current_host", "current_instance_type",
        "current_instance_group", "current_instance_group_hosts", "instance_groups",
        "instance_groups_dict", "distribution_instance_groups", "is_hetero", "module_name",
        "log_level", "framework_module", "input_dir", "input_config_dir", "output_dir",
        "num_cpus", "num_gpus", "num_neurons", "model_dir", "module_dir",
        "output_intermediate_dir")}
    mapping.update(hps=env["hyperparameters"], framework_params=env[
        "additional_framework_parameters"], channels=sorted(env["channel_input_dirs"]),
        training_env=env, user_args=to_cmd_args(env["hyperparameters"]))
    if env["topology"]:
        mapping["topology"] = env["topology"]
    mapping.update({f"channel_{name}": path for name, path in env["channel_input_dirs"].items()})
    mapping.update({f"hp_{key}": value for key, value in env["hyperparameters"].items()})
    return {f"SM_{str(key).upper()}": format_env_value(value) for key, value in mapping.items()}


def format_env_value(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def to_cmd_args(hyperparameters):
    """mapping.to_cmd_args(): sorted ``--key value`` pairs (``-k`` for one-letter keys)."""
    args = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        args.append(f"--{key}" if len(str(key)) > 1 else f"-{key}")
        if hasattr(value, "items"):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append("" if value is None else str(value))
    return args


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


@dataclass
class Proc:
    label: str
    argv: list
    env: dict


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
            "-mca", "btl_vader_single_copy_mechanism", "none", *shlex.split(str(custom))]
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


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------- run and supervise


class LogSink:
    """Log lines go to the live stream and logs.txt; the last ones are kept for errors."""

    def __init__(self, stream, path):
        self.stream, self.path = stream, path
        self.tail = deque(maxlen=TAIL_LINES)
        self.lock = threading.Lock()

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc):
        self.file.close()

    def line(self, text):
        with self.lock:
            self.tail.append(text)
            self.file.write(text + "\n")
            self.file.flush()
            if self.stream is not None:
                self.stream.write(text + "\n")
                self.stream.flush()


def supervise(procs, log, timeout, label_lines, processes_per_host):
    """Run all processes; stop the rest as soon as one fails. None, or (what, exit code)."""
    running, readers = [], []
    deadline = time.monotonic() + timeout if timeout else None
    try:
        for proc in procs:
            popen = subprocess.Popen(
                proc.argv, env=proc.env, cwd=proc.env["SM_MODULE_DIR"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            running.append((proc, popen))
            # Separate pipes: mpirun writes a tag and its text in pieces, so a shared pipe
            # would interleave one rank's stderr into another's stdout line.
            for pipe in (popen.stdout, popen.stderr):
                readers.append(start_reader(pipe, proc.label, log, label_lines,
                                            processes_per_host))
        return wait_for_all(running, deadline, timeout)
    finally:
        stop_all([popen for _, popen in running])
        for reader in readers:
            reader.join(timeout=STOP_GRACE_SECONDS)


def wait_for_all(running, deadline, timeout):
    while True:
        for proc, popen in running:
            code = popen.poll()
            if code not in (None, 0):
                who = f"process on {proc.label}" if proc.label else "entry point"
                if os.path.basename(proc.argv[0]) == "mpirun":
                    who = "mpirun (a rank failed)"
                return f"{who} exited with code {code}", code
        if all(popen.poll() == 0 for _, popen in running):
            return None
        if deadline and time.monotonic() > deadline:
            return f"timed out after {timeout:.0f}s (the estimator's max_run or `timeout`)", None
        time.sleep(0.05)


def start_reader(pipe, label, log, label_lines, processes_per_host):
    def relabel(line):
        tagged = MPI_TAG.match(line)
        if tagged:
            rank = int(tagged.group(1))
            text = MPI_EMPTY_TAG.sub("", tagged.group(2))
            return f"[algo-{rank // processes_per_host + 1},rank {rank}] {text}"
        return f"[{label}] {line}" if label and label_lines else line

    def pump():
        for raw in iter(pipe.readline, b""):
            log.line(relabel(raw.decode("utf-8", "replace").rstrip("\r\n")))
        pipe.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def stop_all(popens):
    """SIGTERM every process group we started (ranks and their children too), then SIGKILL."""
    for popen in popens:
        signal_group(popen, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for popen in popens:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for popen in popens:
        signal_group(popen, signal.SIGKILL)
        popen.wait()


def signal_group(popen, sig):
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def fail_job(spec, paths, log, what, code):
    tail = list(log.tail)
    write_atomic(os.path.join(paths.output, "failure"), f"{what}\n" + "\n".join(tail) + "\n")
    quoted = "\n".join("    " + line for line in tail[-20:])
    raise JobFailed(
        f"process-mode job {spec.job_name} failed: {what}.\nLast lines of its log:\n{quoted}\n"
        f"Full log: {paths.logs}. Fix the error above and run again (a new job folder is made).",
        spec.job_name, spec.job_dir, code, tail)


# ------------------------------------------------------------------------- atomic files


def write_atomic(path, text):
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path, obj):
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def pack_folder(folder, tar_path):
    """tar.gz of a folder's contents (no leading folder name), written atomically."""
    tar_path = Path(tar_path)
    fd, tmp = tempfile.mkstemp(dir=tar_path.parent, prefix=".tmp-", suffix=".tar.gz")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in sorted(os.listdir(folder)):
                tar.add(os.path.join(folder, name), arcname=name)
        os.replace(tmp, tar_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return tar_path
