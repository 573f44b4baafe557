"""MODE="local": the SDK's real local mode (docker-compose) in the stand-in training images.

`make test` builds the images first (`make local-images`); these tests fail, not skip, when the
engine or an image is missing. Each job trains 2 epochs on the fixture data in the image its
notebook names; the toolkit inside the image (not our code) starts the entry point.
"""

import json
import re
import shutil
import subprocess

import nbformat
import numpy as np
import pytest
from aws_fixtures import sdk_offline  # noqa: F401  (telemetry off: nothing leaves the machine)
from helpers import LOCAL_RUN, notebook_path, output_text, rank_lines, run_notebook, served_accuracy

from workshop import PHASE0_DIR, RUNS_DIR, SRC_DIR, dataset, images, jobs, records, run_notebooks
from workshop.entry_points import ENTRY_POINTS
from workshop.images import SERVING_2_20_CPU, TRAINING_2_21_CPU
from workshop.serving import inference

IMAGES = {  # the image's ECR URI -> what the real image carries (platform-facts.md)
    TRAINING_2_21_CPU: {"python": "3.12", "tensorflow": "2.21.0", "keras": "3.15.1",
                        "horovod": None},
    "tensorflow-training:2.12-cpu-py310": {"python": "3.10", "tensorflow": "2.12.0",
                                           "keras": "2.12.0", "horovod": "0.27.0"},
    "tensorflow-training:2.11-cpu-py39": {"python": "3.9", "tensorflow": "2.11.0",
                                          "keras": "2.11.0", "horovod": "0.26.1"},
}
ENTRY_POINTS_BY_SCRIPT = {e.script: e for e in ENTRY_POINTS}
REGISTRY = "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
VERSIONS = """
import importlib.util, json, os, shutil, sys
import tensorflow as tf, keras
hvd = importlib.util.find_spec("horovod")
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2], "tensorflow": tf.__version__,
    "keras": keras.__version__,
    "horovod": __import__("horovod").__version__ if hvd else None,
    "toolkit_module": os.environ.get("SAGEMAKER_TRAINING_MODULE"),
    "commands": [c for c in ("train", "mpirun", "/usr/sbin/sshd") if shutil.which(c)],
}))
"""


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_stand_in_image_carries_the_real_images_versions(image):
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", REGISTRY + image,
                          "python", "-c", VERSIONS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {key: found[key] for key in IMAGES[image]} == IMAGES[image]
    assert found["toolkit_module"] == "sagemaker_tensorflow_container.training:main"
    assert found["commands"] == ["train", "mpirun", "/usr/sbin/sshd"]


def run_in_local_mode(tmp_path, number, **parameters):
    result, notebook = run_notebook(tmp_path, number, {"MODE": "local", **LOCAL_RUN, **parameters})
    return result, output_text(notebook)


def metrics_from_log(text):
    """What SageMaker would chart: the notebooks' metric_definitions applied to the job's log."""
    return {d["Name"]: [float(v) for v in re.findall(d["Regex"], text)]
            for d in jobs.METRIC_DEFINITIONS}


def check_job(result, text, data_dir, workers, epochs=LOCAL_RUN["EPOCHS"]):
    assert result["mode"] == "local" and result["workers"] == workers
    assert result["epochs"] == epochs and result["eval_accuracy"] > 0.3
    job_dir = RUNS_DIR / result["job_name"]
    metrics = json.loads((job_dir / "output" / "metrics.json").read_text()) \
        if (job_dir / "output" / "metrics.json").exists() \
        else json.loads((job_dir / "output" / "data" / "metrics.json").read_text())
    charted = metrics_from_log(text)
    assert charted["validation:accuracy"] == pytest.approx(
        [row["val_accuracy"] for row in metrics["history"]], abs=1e-4)
    assert charted["eval:accuracy"] == pytest.approx([metrics["eval_accuracy"]], abs=1e-4)
    assert served_accuracy(job_dir / "model.tar.gz", data_dir) == pytest.approx(
        metrics["eval_accuracy"], abs=0.01)
    return metrics


def check_ranks(text, count):
    """Every rank/worker ran, on its own shard, and ended with the same weights."""
    lines = rank_lines(text)
    assert sorted(int(line[1]) for line in lines) == list(range(count)), lines
    assert sorted(int(line[4]) for line in lines) == list(range(count))  # shards
    assert len({line[6] for line in lines}) == 1, f"ranks disagree: {lines}"  # fingerprints


def test_1_2_keras_script_mode_in_the_2_21_image(local_1_2, cifar_data_dir):
    result, text = local_1_2[0], output_text(local_1_2[1])
    metrics = check_job(result, text, cifar_data_dir, workers=1)
    assert metrics["tensorflow"] == "2.21.0" and metrics["keras"].startswith("3.")


def test_1_5_horovod_over_two_containers_in_the_2_12_image(sdk_offline, tmp_path,  # noqa: F811
                                                           cifar_data_dir):
    result, text = run_in_local_mode(tmp_path, "1.5", DATA_DIR=str(cifar_data_dir),
                                     INSTANCE_COUNT=2)
    metrics = check_job(result, text, cifar_data_dir, workers=2)
    assert metrics["tensorflow"] == "2.12.0"
    check_ranks(text, 2)


def test_3_2_mwms_over_two_containers_in_the_2_21_image(sdk_offline, tmp_path,  # noqa: F811
                                                        cifar_data_dir):
    result, text = run_in_local_mode(tmp_path, "3.2", DATA_DIR=str(cifar_data_dir),
                                     INSTANCE_COUNT=2)
    check_job(result, text, cifar_data_dir, workers=2)
    check_ranks(text, 2)


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



INFERENCE_IMAGE = REGISTRY + SERVING_2_20_CPU


def test_inference_stand_in_is_the_uri_4_1_names_with_the_real_versions():
    assert images.uri(SERVING_2_20_CPU, "us-east-1") == INFERENCE_IMAGE
    assert SERVING_2_20_CPU in "".join(cell.source for cell in nbformat.read(
        notebook_path("4.1"), 4).cells)
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", INFERENCE_IMAGE,
                          "python", "-c", VERSIONS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert (found["python"], found["tensorflow"]) == ("3.12", "2.20.0")
    serve = subprocess.run(["docker", "run", "--rm", "--network", "none", INFERENCE_IMAGE,
                            "bash", "-c", "command -v serve && echo $SAGEMAKER_BIND_TO_PORT"],
                           capture_output=True, text=True, timeout=300)
    assert serve.stdout.split() == ["/usr/bin/serve", "8080"], serve.stderr


def containers_of(image):
    """The running containers of an image."""
    out = subprocess.run(["docker", "ps", "--filter", f"ancestor={image}", "--format",
                          "{{.ID}} {{.Status}}"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n") if out.stdout.strip() else []


def test_4_1_deploys_and_transforms_in_the_inference_image(sdk_offline, tmp_path,  # noqa: F811
                                                          cifar_data_dir, local_1_2):
    """The SDK's own local-mode deploy, predict and transform, against the stand-in image."""
    import tensorflow as tf

    assert containers_of(INFERENCE_IMAGE) == []  # nothing left over from an earlier run
    trained = records.load_result("1.2")  # local_1_2's, unless a later one: 4.1 deploys the last
    shutil.rmtree(RUNS_DIR / "4.1-deploy" / "transform-out", ignore_errors=True)
    path = notebook_path("4.1")
    outcome = run_notebooks.execute(path, {"MODE": "local", "DATA_DIR": str(cifar_data_dir),
                                           "BATCH_SIZE": 100}, output_dir=tmp_path)
    assert outcome["ok"], f"{path.name}: {outcome['error']}"
    result = outcome["result"]
    # Same SavedModel, same 256 eval images, TF 2.20 in the container: the job's own accuracy.
    assert result["accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    assert result["transform_accuracy"] == result["accuracy"]
    assert result["mode"] == "local" and result["requests"] == 3  # 256 images, 100 a request
    assert 0 < result["p50_ms"] <= result["p95_ms"] and result["images_per_sec"] > 0
    outputs = sorted((RUNS_DIR / "4.1-deploy" / "transform-out").glob("*.out"))
    assert [p.name for p in outputs] == ["eval.jsonl.out"]
    replies = [json.loads(line) for line in outputs[0].read_text().splitlines()]
    assert len(replies) == 3  # one reply per input line
    # Image by image, TF 2.20 in the container gives what the signature gives in this kernel.
    served = [row for reply in replies for row in reply["predictions"]]
    signature = inference.load_signature(trained["model_artifact"])
    images, _ = dataset.read_examples(cifar_data_dir, "eval", count=None)
    expected = signature(image=tf.constant(images))
    assert [row["class_id"] for row in served] == expected["class_id"].numpy().tolist()
    assert np.array([row["probabilities"] for row in served]) == pytest.approx(
        expected["probabilities"].numpy(), abs=1e-4)
    assert containers_of(INFERENCE_IMAGE) == []  # endpoint and transform containers are gone
