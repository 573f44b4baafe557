"""The SageMaker training toolkit's view of a job, replayed: ``SM_*`` variables and argv.

Pure functions that compute what ``sagemaker-training`` (5.1.4, inside the TensorFlow training
images) gives an entry point: ``training_env`` is ``dict(Environment())``, ``sm_env_vars`` is
``Environment.to_env_vars()``, ``to_cmd_args`` is ``mapping.to_cmd_args()``.
tests/test_conformance.py runs a probe under the real toolkit and under process mode and compares.
"""

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

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



def decode_hyperparameters(encoded):
    """JSON-decode each value where possible, like the toolkit's read_hyperparameters()."""
    decoded = {}
    for key, value in encoded.items():
        try:
            decoded[key] = json.loads(value)
        except (ValueError, TypeError):
            decoded[key] = value
    return decoded



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

