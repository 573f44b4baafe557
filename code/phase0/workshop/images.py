"""ECR URIs of the SageMaker TensorFlow images, for any region.

SDK v2 2.257.7 and v3 resolve TensorFlow images only up to 2.19, which reached end of patch on
2026-03-11 (AWS's DLC support policy). The supported images, TF 2.21 training and TF Serving
2.20 inference, are therefore named by URI (``image_uri=``). Their tags are the ``prod_image``
of AWS's image configs (aws/deep-learning-containers, ``.github/config/image/tensorflow/
2.21-training-sagemaker-{cpu,cuda}.yml`` and ``2.20-inference-sagemaker-{cpu,cuda}.yml``); the
registry account of each region is the SDK's own table for its TensorFlow images.
"""

import importlib.util
import json
import os

# The notebooks write these tags out; this module only adds the region's registry.
TRAINING_2_21_GPU = "tensorflow-training:2.21-gpu-py312-cu129-amzn2023-sagemaker-v1"
TRAINING_2_21_CPU = "tensorflow-training:2.21-cpu-py312-amzn2023-sagemaker-v1"
SERVING_2_20_GPU = "tensorflow-inference:2.20-gpu-py312-cu129-amzn2023-sagemaker-v1"
SERVING_2_20_CPU = "tensorflow-inference:2.20-cpu-py312-amzn2023-sagemaker-v1"
DEFAULT_REGION = "us-east-1"


def _sdk_tensorflow_config():
    spec = importlib.util.find_spec("sagemaker")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the SageMaker Python SDK is not installed in this kernel")
    root = list(spec.submodule_search_locations)[0]
    for folder in ("image_uri_config", os.path.join("core", "image_uri_config")):
        path = os.path.join(root, folder, "tensorflow.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise RuntimeError(f"no image_uri_config/tensorflow.json under {root}")


def registry(region):
    """``<account>.dkr.ecr.<region>.amazonaws.com[.cn]`` of AWS's TensorFlow images there."""
    accounts = _sdk_tensorflow_config()["training"]["versions"]["2.19.0"]["registries"]
    if region not in accounts:
        raise ValueError(f"region {region!r} has no SageMaker TensorFlow images "
                         f"(the SDK lists {len(accounts)} regions, e.g. {DEFAULT_REGION})")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{accounts[region]}.dkr.ecr.{region}.{domain}"


def uri(tag, region=None):
    """The full image URI of ``repository:tag`` in ``region`` (default us-east-1)."""
    return f"{registry(region or DEFAULT_REGION)}/{tag}"
