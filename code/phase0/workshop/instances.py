"""GPUs per SageMaker instance type: how many processes Horovod starts on each host.

SageMaker runs one Horovod/MPI process per GPU. The SageMaker Python SDK ships a table of GPU
counts (``sagemaker/image_uri_config/instance_gpu_info.json``, per region, read through
``sagemaker.instance_types_gpu_info``); it is used first. Types it lacks come from the dated
supplement below, CPU-only families have no GPU, and any other type is an error: a guessed
"1" would start one process on an 8-GPU host.
"""

import json
import os

# Not in the table of SDK v2 2.257.7 (nor v3 2.27.0's copy), which has g5.2xlarge and up but not
# g5.xlarge, and no g6: the AWS Batch User Guide, "Run GPU jobs" (docs.aws.amazon.com/batch/
# latest/userguide/gpu-jobs.html), table of GPU instance types, read 2026-12-04.
SUPPLEMENT = {
    "ml.g5.xlarge": 1,
    "ml.g6.xlarge": 1, "ml.g6.2xlarge": 1, "ml.g6.4xlarge": 1, "ml.g6.8xlarge": 1,
    "ml.g6.16xlarge": 1, "ml.g6.12xlarge": 4,
}
SUPPLEMENT_SOURCE = "AWS Batch User Guide, 'Run GPU jobs' (read 2026-12-04)"
# General purpose, compute and memory optimised families: no accelerator.
CPU_FAMILIES = {"t3", "m4", "m5", "m5d", "m6i", "m6id", "m7i", "c4", "c5", "c5d", "c5n", "c6i",
                "c7i", "r5", "r5d", "r6i", "r7i"}
DEFAULT_REGION = "us-east-1"


class UnknownInstanceType(ValueError):
    """The project does not know how many GPUs this instance type has."""


def sdk_gpu_table(region):
    """{instance type: GPU count} from the installed SDK's own file (v2 or v3 layout)."""
    import importlib.util

    spec = importlib.util.find_spec("sagemaker")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = list(spec.submodule_search_locations)[0]
    for folder in ("image_uri_config", os.path.join("core", "image_uri_config")):
        path = os.path.join(root, folder, "instance_gpu_info.json")
        if os.path.exists(path):
            with open(path) as f:
                by_region = json.load(f)
            table = by_region.get(region) or by_region.get(DEFAULT_REGION, {})
            return {name: int(info["Count"]) for name, info in table.items()}
    return {}


def gpus(instance_type, region=None):
    """GPUs of ``instance_type`` (0 for a CPU type); UnknownInstanceType when nobody knows."""
    table = sdk_gpu_table(region or DEFAULT_REGION)
    if instance_type in table:
        return table[instance_type]
    if instance_type in SUPPLEMENT:
        return SUPPLEMENT[instance_type]
    family = instance_type.removeprefix("ml.").split(".")[0]
    if family in CPU_FAMILIES:
        return 0
    raise UnknownInstanceType(
        f"{instance_type!r}: the SageMaker SDK's GPU table and this workshop's supplement "
        f"(workshop/instances.py) do not know how many GPUs it has, so the number of Horovod "
        f"processes per host cannot be chosen for it. Set PROCESSES_PER_HOST to its GPU count "
        f"in the parameters cell, or pick a type from the table (e.g. ml.g5.12xlarge: 4 GPUs).")


def processes_per_host(instance_type, region=None):
    """One process per GPU; one on a CPU instance."""
    return max(gpus(instance_type, region), 1)
