"""train_keras.py and train_tf.py as their notebooks (1.2, 2.1) run them in process mode (the
container contract): the saved model serves; metrics.json, logs and the metric regexes agree;
train_keras.py copied out and run by hand stops on SIGTERM, saves, and resumes without losing
or repeating an epoch; bad input fails clearly. On Keras 3 and stopped by SageMaker:
test_stopping.py.
"""

import json
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import NOTEBOOK_RUN, clean_env, served_accuracy, standalone

from cifar import model as cnn
from workshop import jobs
from workshop.entry_points import ENTRY_POINTS as REGISTRY
from workshop.process_mode.runner import JobFailed

ENTRY_POINTS = ("train_keras.py", "train_tf.py")
SMALL = {"epochs": 1, "batch-size": 64}


def process_job(entry_point, data_dir, runs_dir, hyperparameters=None, inputs=None):
    estimator = jobs.workshop_estimator("process", entry_point, hyperparameters or SMALL)
    inputs = inputs if inputs is not None else jobs.data_channels("process", data_dir)
    return jobs.run_in_process(estimator, inputs, runs_dir=runs_dir, logs=False)


@pytest.fixture(scope="module", params=ENTRY_POINTS)
def trained(request, notebook_run):
    """Each entry point's process-mode job as its notebook (1.2, 2.1) ran it for the notebook
    tests (conftest.notebook_run), read from its folder as the notebook's result is."""
    (notebook,) = [e.notebook for e in REGISTRY if e.script == request.param]
    job = notebook_run(notebook).job_dir
    metrics = json.loads((job / "output" / "data" / "metrics.json").read_text())
    return request.param, SimpleNamespace(model_artifact=job / "model.tar.gz", metrics=metrics,
                                          output_dir=job / "output" / "data",
                                          logs_path=job / "logs.txt")


def test_model_tar_holds_a_servable_savedmodel(trained, cifar_data_dir, tmp_path, monkeypatch):
    _, result = trained
    with tarfile.open(result.model_artifact) as tar:
        names = tar.getnames()
    assert "1/saved_model.pb" in names and any(n.startswith("1/variables/") for n in names)
    assert not any("checkpoint" in n or n.endswith(".h5") for n in names)  # no checkpoints inside
    # This process's temp folder for the unpacking: the other workers unpack models meanwhile.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    served = served_accuracy(result.model_artifact, cifar_data_dir)
    assert list(tmp_path.glob("model-*")) == []  # nothing left behind
    assert served == pytest.approx(result.metrics["eval_accuracy"], abs=0.01)
    assert served > 0.2  # one epoch on learnable data: above chance (0.1)


def test_metrics_json_and_the_log_agree(trained):
    entry_point, result = trained
    metrics = result.metrics
    assert metrics["entry_point"] == entry_point and metrics["epochs"] == NOTEBOOK_RUN["EPOCHS"]
    row = metrics["history"][-1]
    assert set(row) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                        "images_per_sec"}
    assert row["images_per_sec"] > 0 and metrics["images_per_sec"] > 0
    assert (result.output_dir / "tensorboard").is_dir()
    assert metrics["precision"] == cnn.choose_precision("auto")  # what the default picks here
    # The SageMaker metric_definitions, applied to the real log as CloudWatch would.
    log = result.logs_path.read_text()
    found = {}
    for definition in jobs.METRIC_DEFINITIONS:
        values = re.findall(definition["Regex"], log)
        assert values, f"{definition['Name']} matches nothing in the log"
        found[definition["Name"]] = float(values[-1])
    assert found["train:loss"] == pytest.approx(row["loss"], abs=1e-4)
    assert found["validation:accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-4)
    assert found["eval:accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-4)
    assert found["train:images_per_sec"] == pytest.approx(row["images_per_sec"], abs=0.1)


def test_sigterm_then_rerun_resumes_without_losing_or_repeating_epochs(cifar_data_dir, tmp_path):
    """train_keras.py as people copy it (a checkpoint folder, no SageMaker); train_tf.py's resume
    is test_stopping's, in process mode."""
    command = standalone(sys.executable, "train_keras.py", cifar_data_dir, tmp_path,
                         "--epochs", "4", "--batch-size", "32",
                         "--checkpoint-dir", str(tmp_path / "checkpoints"))
    first = subprocess.Popen(command, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoints" / "checkpoint").exists():  # epoch 1 is saved
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # what SageMaker sends when a spot instance is reclaimed
    first_log = first.communicate(timeout=60)[0]
    # It stops after the step under way, saves the model it has and exits 0 (cifar/stopping.py).
    assert first.returncode == 0, first_log[-3000:]
    done_first = [int(n) for n in re.findall(r"^epoch (\d+)/4", first_log, re.M)]
    assert done_first and max(done_first) < 4
    assert f"stopped by SIGTERM after epoch {max(done_first)}: model saved" in first_log

    second = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = int(re.search(r"resuming from checkpoint: epochs 1-(\d+) done", second.stdout)[1])
    assert resumed >= 1
    done_second = [int(n) for n in re.findall(r"^epoch (\d+)/4", second.stdout, re.M)]
    assert done_second == list(range(resumed + 1, 5))  # nothing trained twice
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]  # nothing lost


def failure_of(entry_point, data_dir, runs, **kwargs):
    with pytest.raises(JobFailed) as caught:
        process_job(entry_point, data_dir, runs, **kwargs)
    failure = (Path(caught.value.job_dir) / "output" / "failure").read_text()
    return str(caught.value), failure


def test_missing_channel_names_the_channel(cifar_data_dir, tmp_path):
    inputs = jobs.data_channels("process", cifar_data_dir)
    del inputs["eval"]
    message, failure = failure_of("train_tf.py", cifar_data_dir, tmp_path, inputs=inputs)
    assert "--eval is missing" in failure and "'eval' input" in failure
    assert "--eval is missing" in message


def test_empty_channel_and_non_tfrecord_file_name_the_channel(cifar_data_dir, tmp_path):
    inputs = jobs.data_channels("process", cifar_data_dir)
    (tmp_path / "empty").mkdir()
    inputs["validation"] = f"file://{tmp_path / 'empty'}"
    _, failure = failure_of("train_keras.py", cifar_data_dir, tmp_path / "a", inputs=inputs)
    assert "channel 'validation': no *.tfrecord files" in failure
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "images.tfrecord").write_bytes(b"\x89PNG not a record" * 100)
    inputs["validation"] = f"file://{tmp_path / 'junk'}"
    _, failure = failure_of("train_keras.py", cifar_data_dir, tmp_path / "b", inputs=inputs)
    assert "images.tfrecord is not a CIFAR-10 TFRecord file" in failure


def test_unknown_hyperparameter_is_refused_by_name(cifar_data_dir, tmp_path):
    _, failure = failure_of("train_keras.py", cifar_data_dir, tmp_path,
                            hyperparameters={**SMALL, "learning_rate": 0.1})
    assert "unrecognized arguments: --learning_rate 0.1" in failure
