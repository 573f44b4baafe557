"""A job stopped as SageMaker stops one keeps a model that serves.

At max_run (or when spot capacity is reclaimed) SageMaker sends SIGTERM to the container's main
process, kills the container 120 s later and uploads what /opt/ml/model holds. Its training
toolkit does not pass the signal on to the entry point (sagemaker-training-toolkit#125), so
what is there is what the script put there before. Here the SDK's real local mode runs the job in
the stand-in image and the test does to its container what SageMaker does: SIGTERM to the main
process only, a window (shortened), SIGKILL. The model.tar.gz local mode then packs must hold
a servable model (the entry points export one after epoch 1 and then periodically; before that
they saved only at the end, and this test failed: an empty model.tar.gz).
"""

import json
import re
import subprocess
import tarfile
import threading
import time

import pytest
from aws_fixtures import sdk_offline  # noqa: F401  (telemetry off: nothing leaves the machine)
from helpers import served_accuracy

from workshop import jobs

WINDOW = 10  # SageMaker's is 120 s; nothing in the container acts on the signal either way
SLOW = {"epochs": 60, "batch-size": 16}  # far more than the test lets it train
CASES = {"train_keras.py": {}, "train_keras_horovod.py": {"processes_per_host": 2}}


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=120)


def wait_for(condition, what, seconds=600):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what} after {seconds} s")


def job_containers(image, job_name):
    """The running containers of this job: other tests may run the same image meanwhile, and
    local mode puts the job's name in each of its containers' environment."""
    found = []
    for container in docker("ps", "--filter", f"ancestor={image}", "--format",
                            "{{.ID}}").stdout.split():
        env = docker("inspect", "--format", "{{json .Config.Env}}", container, check=False)
        if f"TRAINING_JOB_NAME={job_name}" in json.loads(env.stdout or "[]"):
            found.append(container)
    return found


@pytest.mark.parametrize("script", sorted(CASES))
def test_a_job_killed_like_sagemaker_kills_it_keeps_a_model_that_serves(
        script, sdk_offline, cifar_data_dir, tmp_path):  # noqa: F811
    from sagemaker.utils import name_from_base

    estimator = jobs.workshop_estimator("local", script, SLOW, **CASES[script])
    estimator.output_path = f"file://{tmp_path}"  # local mode packs model.tar.gz there
    image = estimator.training_image_uri()
    job_name = name_from_base(estimator.base_job_name)
    outcome = {}

    def fit():
        try:
            estimator.fit(jobs.data_channels("local", cifar_data_dir), job_name=job_name,
                          logs=False)
            outcome["completed"] = True
        except Exception as err:  # the SDK raises when the container dies: expected
            outcome["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    (container,) = wait_for(lambda: job_containers(image, job_name), "the job's container")
    # Epoch 2 under way: epoch 1 is finished, checkpointed and (new code) exported.
    wait_for(lambda: re.search(r"epoch 2/60 ", docker("logs", container, check=False).stdout),
             "the log line of epoch 2")
    docker("kill", "--signal", "TERM", container)  # to the container's main process only
    time.sleep(WINDOW)
    log = docker("logs", container, check=False).stdout
    survived = bool(job_containers(image, job_name))
    docker("kill", container, check=False)  # SIGKILL, as SageMaker after the window
    thread.join(timeout=300)

    assert "completed" not in outcome, "the job finished before it was killed"
    artifact = tmp_path / "model.tar.gz"
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        assert "1/saved_model.pb" in names, f"no model in {artifact}: {names}"
        exported = json.load(tar.extractfile("1/assets.extra/export.json"))
    assert exported["epoch"] >= 1
    accuracy = served_accuracy(artifact, cifar_data_dir)
    print(f"\n{script}: container {'ran on' if survived else 'exited'} after SIGTERM, the entry "
          f"point {'saw' if 'stopped by SIGTERM' in log else 'never saw'} it; model.tar.gz kept "
          f"the export of epoch {exported['epoch']}, serving accuracy {accuracy:.3f}")
    assert accuracy > 0.2  # a trained model: above chance (0.1)
