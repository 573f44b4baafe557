"""The stand-in training images (containers/build_images.py): the versions each carries, and the
entry points that no notebook test runs in local mode, each in its own image through the SDK's
real local mode (test_local_mode.py runs the notebooks there), or directly with `docker run`.
"""

import json
import subprocess

import numpy as np
import pytest
from aws_fixtures import sdk_offline  # noqa: F401  (telemetry off: nothing leaves the machine)
from helpers import REGISTRY, VERSIONS, check_job, check_ranks, served_accuracy

from workshop import PHASE0_DIR, SRC_DIR, jobs, records
from workshop.entry_points import ENTRY_POINTS
from workshop.images import TRAINING_2_21_CPU

IMAGES = {  # the image's ECR URI -> what the real image carries (platform-facts.md)
    TRAINING_2_21_CPU: {"python": "3.12", "tensorflow": "2.21.0", "keras": "3.15.1",
                        "horovod": None},
    "tensorflow-training:2.12-cpu-py310": {"python": "3.10", "tensorflow": "2.12.0",
                                           "keras": "2.12.0", "horovod": "0.27.0"},
    "tensorflow-training:2.11-cpu-py39": {"python": "3.9", "tensorflow": "2.11.0",
                                          "keras": "2.11.0", "horovod": "0.26.1"},
}
ENTRY_POINTS_BY_SCRIPT = {e.script: e for e in ENTRY_POINTS}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_stand_in_image_carries_the_real_images_versions(image):
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", REGISTRY + image,
                          "python", "-c", VERSIONS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {key: found[key] for key in IMAGES[image]} == IMAGES[image]
    assert found["toolkit_module"] == "sagemaker_tensorflow_container.training:main"
    assert found["commands"] == ["train", "mpirun", "/usr/sbin/sshd"]


@pytest.mark.parametrize("script, count", [("train_tf.py", 1), ("train_tf_horovod.py", 2),
                                           ("train_tf_ddp.py", 2)])
def test_entry_point_in_its_image(sdk_offline, cifar_data_dir, capfd, script, count):  # noqa: F811
    """The entry points no notebook test above runs in local mode, each in its own image; 4
    epochs, so that the weight averaging (cifar.model.Lookahead, from epoch 3's end) runs in
    the 2.21, 2.12 (Horovod 0.27) and 2.11 (py39) images."""
    hyperparameters = {"epochs": 4, "batch-size": 32, "learning-rate": 0.02}
    estimator = jobs.workshop_estimator("local", script, hyperparameters, instance_count=count)
    estimator.fit(jobs.data_channels("local", cifar_data_dir))
    result = jobs.result_of(estimator)
    text = capfd.readouterr().out
    metrics = check_job(records.headline(result), text, cifar_data_dir, workers=count,
                        epochs=hyperparameters["epochs"])
    assert metrics["tensorflow"].startswith(ENTRY_POINTS_BY_SCRIPT[script].framework_version)
    if count > 1:
        check_ranks(text, count)


def run_in_image(image, script, data_dir, out_dir, *args, harness=None):
    """Run an entry point directly in an image (no SageMaker), data read-only, no network."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mounts = ["-v", f"{SRC_DIR}:/code:ro", "-v", f"{data_dir}:/data:ro", "-v",
              f"{out_dir}:/out"]
    if harness:
        mounts += ["-v", f"{harness}:/harness:ro", "-e", "PYTHONPATH=/harness"]
    argv = ["docker", "run", "--rm", "--network", "none", *mounts, "-w", "/code",
            REGISTRY + image, "python", script, "--train", "/data/train",
            "--validation", "/data/validation", "--eval", "/data/eval",
            "--sm-model-dir", "/out/model", "--output-data-dir", "/out/output", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def test_mwms_with_two_replicas_per_worker_keeps_batch_norm_finite(cifar_data_dir, tmp_path):
    """A worker with two GPUs on the Keras 3 image, over a batch count that two replicas cannot
    share evenly (1,024 records / 36 = 29 batches): no replica may get an empty batch. Before
    the fix the second epoch logged `loss: nan` and the model predicted one class. Four
    epochs: the weight averaging (from epoch 3's end) runs across the two replicas too."""
    harness = PHASE0_DIR.parent.parent / "tests" / "two_replica_worker"
    done = run_in_image(TRAINING_2_21_CPU, "train_tf_mwms.py", cifar_data_dir,
                        tmp_path, "--epochs", "4", "--batch-size", "36",
                        "--learning-rate", "0.02", harness=harness)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "worker 0/1" in done.stdout
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert metrics["workers"] == 2  # replicas in sync: the harness took effect
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_accuracy"] > 0.3
    assert served_accuracy(tmp_path / "model", cifar_data_dir) == pytest.approx(
        metrics["eval_accuracy"], abs=0.01)
