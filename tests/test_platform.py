"""SageMaker as it is in December 2026: instance types that exist, GPU counts the project can
vouch for, and the supported TensorFlow images named by URI in every region."""

import json
import os
import re

import nbformat
import pytest
import sagemaker
from helpers import notebook_path

from workshop import PHASE0_DIR, SRC_DIR, images, instances, jobs, run_notebooks
from workshop.entry_points import ENTRY_POINTS

P3 = re.compile(r"ml\.p3")


def sdk_gpu_file():
    path = os.path.join(os.path.dirname(sagemaker.__file__), "image_uri_config",
                        "instance_gpu_info.json")
    with open(path) as f:
        return json.load(f)


def parameters(path):
    (cell,) = [c for c in nbformat.read(path, as_version=4).cells
               if "parameters" in c.metadata.get("tags", [])]
    namespace = {}
    exec(cell.source, namespace)
    return namespace


@pytest.mark.parametrize("path", run_notebooks.notebooks(), ids=lambda p: p.name[:3])
def test_no_parameter_names_a_retired_p3_type(path):
    for name, value in parameters(path).items():
        assert not (isinstance(value, str) and P3.search(value)), (path.name, name, value)


def test_no_default_or_code_cell_names_a_p3_type():
    sources = [p.read_text() for p in (PHASE0_DIR / "workshop").rglob("*.py")]
    sources += [c.source for path in run_notebooks.notebooks()
                for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert not [s for s in sources if P3.search(s)]
    assert not P3.search(jobs.DEFAULT_HOST_INSTANCE)


def test_gpu_counts_agree_with_the_sdks_table_where_both_know_a_type():
    table = sdk_gpu_file()
    for region, types in table.items():
        for name, info in types.items():
            assert instances.gpus(name, region) == info["Count"], (region, name)
            if name in instances.SUPPLEMENT:
                assert instances.SUPPLEMENT[name] == info["Count"], name


def test_the_notebooks_types_are_sized_from_the_sdk_or_the_dated_supplement():
    sdk_types = sdk_gpu_file()["us-east-1"]
    assert "ml.g5.xlarge" not in sdk_types  # why the supplement has it (SDK 2.257.7)
    assert instances.gpus("ml.g5.xlarge") == 1 and instances.gpus("ml.g5.12xlarge") == 4
    assert instances.gpus("ml.g6.12xlarge") == 4 and instances.gpus("ml.p4d.24xlarge") == 8
    assert instances.gpus("ml.m5.xlarge") == 0


def test_horovod_starts_one_process_per_gpu_and_refuses_a_type_it_cannot_size():
    assert jobs.processes_per_host_for("host", "ml.g5.12xlarge") == 4
    assert jobs.processes_per_host_for("host", "ml.g6.12xlarge") == 4
    assert jobs.processes_per_host_for("host", "ml.m5.xlarge") == 1  # CPU: one process
    assert jobs.processes_per_host_for("process", "ml.g6e.48xlarge") == 1  # simulated hosts
    with pytest.raises(instances.UnknownInstanceType, match="PROCESSES_PER_HOST"):
        jobs.processes_per_host_for("host", "ml.g6e.48xlarge")
    assert jobs.processes_per_host_for("host", "ml.g6e.48xlarge", 8) == 8  # the learner's word


def test_image_uris_follow_the_region_registry():
    assert images.uri(images.TRAINING_2_21_GPU, "us-east-1") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
        "tensorflow-training:2.21-gpu-py312-cu129-amzn2023-sagemaker-v1")
    assert images.registry("ap-east-1") == "871362719292.dkr.ecr.ap-east-1.amazonaws.com"
    assert images.registry("cn-north-1").endswith(".amazonaws.com.cn")
    with pytest.raises(ValueError, match="no SageMaker TensorFlow images"):
        images.registry("xx-nowhere-1")


def test_image_for_takes_the_gpu_build_only_on_a_gpu(sdk_session):
    tags = {"gpu": images.TRAINING_2_21_GPU, "cpu": images.TRAINING_2_21_CPU}
    assert jobs.image_for("ml.g5.xlarge", sdk_session, **tags).endswith(images.TRAINING_2_21_GPU)
    assert jobs.image_for("ml.m5.xlarge", sdk_session, **tags).endswith(images.TRAINING_2_21_CPU)
    assert jobs.image_for("local", sdk_session, **tags).endswith(images.TRAINING_2_21_CPU)
    assert jobs.image_for("local_gpu", sdk_session, **tags).endswith(images.TRAINING_2_21_GPU)


@pytest.fixture
def sdk_session():
    return jobs.session_for("process")


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.notebook)
def test_script_mode_notebooks_train_on_the_supported_image(entry):
    """1.2, 2.1, 3.2 on TF 2.21 (the supported image), by URI; 1.5/2.2/3.1 keep the last images
    with Horovod and SMDDP and say that they are unpatched."""
    path = notebook_path(entry.notebook)
    text = " ".join(" ".join(c.source for c in nbformat.read(path, as_version=4).cells).split())
    if entry.image_tags:
        assert entry.framework_version == "2.21"
        assert all(tag in text for tag in entry.image_tags)
    else:
        assert entry.framework_version in ("2.11", "2.12")
        assert "end of patch" in text


def test_the_smddp_script_names_no_retired_type():
    assert not P3.search((SRC_DIR / "train_tf_ddp.py").read_text())
