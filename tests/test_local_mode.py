"""MODE="local": the notebooks in the SDK's real local mode (docker-compose) in the stand-in images.

`make test` builds the images first (`make local-images`); these tests fail, not skip, when the
engine or an image is missing. Each job trains 2 epochs on the fixture data in the image its
notebook names; the toolkit inside the image (not our code) starts the entry point. The entry
points no notebook runs here, and the images themselves, are checked in test_images.py.
"""

import json
import shutil
import subprocess

import nbformat
import numpy as np
import pytest
from aws_fixtures import sdk_offline  # noqa: F401  (telemetry off: nothing leaves the machine)
from helpers import (
    LOCAL_RUN,
    REGISTRY,
    VERSIONS,
    check_job,
    check_ranks,
    notebook_path,
    output_text,
    run_notebook,
)

from workshop import RUNS_DIR, dataset, images, records, run_notebooks
from workshop.images import SERVING_2_20_CPU
from workshop.serving import inference


def run_in_local_mode(tmp_path, number, **parameters):
    result, notebook = run_notebook(tmp_path, number, {"MODE": "local", **LOCAL_RUN, **parameters})
    return result, output_text(notebook)


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
