"""SIGTERM in the entry points, as SageMaker sends it at max_run: they stop at the end of the step
under way, the chief saves the model it has, and the job ends Stopped with a model that serves.

- process mode, every entry point: max_run shorter than the training -> Stopped, model.tar.gz
  serves uint8 images, metrics.json records the stop, far less than the 120 s window used;
- Keras 3 (.venv-keras3): the same scripts, SIGTERM sent by hand mid-epoch;
- distributed: SIGTERM to ONE rank/worker only -> all agree and stop at the same step, same
  weights everywhere, one saved model;
- RESUME_FROM: a stopped job resumed from its checkpoint location finishes every epoch once,
  with the learning rate where an uninterrupted run has it.

Each test prints ``SIGTERM->exit <entry point>: X s`` (run pytest with -s to see the figures).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    KERAS3_PYTHON,
    SRC,
    clean_env,
    mpirun_argv,
    rank_dirs,
    served_accuracy,
    standalone,
    start_mwms_workers,
)

from workshop import jobs, resume
from workshop.process_mode.runner import JobStoppedWarning, run_process_job

# Past start-up (8-25 s here when the suite runs alone) and into training, far shorter than 60
# epochs (train_tf.py's progress bar showed about 1.5 s an epoch at batch 16 here, so 30 epochs
# came close to fitting); a SIGTERM still in start-up is a case the test accepts (done == 0).
MAX_RUN = 35
WINDOW = 120  # SageMaker's; process mode's default
SLOW = {"epochs": 60, "batch-size": 16}
DISTRIBUTIONS = {
    "train_keras.py": {},
    "train_tf.py": {},
    "train_keras_horovod.py": {"processes_per_host": 2},  # the distribution: the registry's
    "train_tf_horovod.py": {"processes_per_host": 2},
    "train_tf_ddp.py": {"instance_count": 2},
    "train_tf_mwms.py": {"instance_count": 2},
}
EXIT_LINE = re.compile(r"all processes ended ([\d.]+)s after SIGTERM")
FINGERPRINT = re.compile(r"^(?:\[[^\]]*\] )?(?:rank|worker) \d+/\d+: .*weights fingerprint "
                         r"([0-9a-f]{8})$", re.M)


def epoch_numbers(text, epochs):
    return [int(n) for n in re.findall(rf"^(?:\[[^\]]*\] )?epoch (\d+)/{epochs} ", text, re.M)]


@pytest.mark.parametrize("entry_point", list(DISTRIBUTIONS))
def test_max_run_stops_the_job_with_a_model_that_serves(entry_point, cifar_data_dir, tmp_path):
    estimator = jobs.workshop_estimator("process", entry_point, SLOW, max_run=MAX_RUN,
                                        **DISTRIBUTIONS[entry_point])
    with pytest.warns(JobStoppedWarning):
        result = jobs.run_in_process(estimator, jobs.data_channels("process", cifar_data_dir),
                                     runs_dir=tmp_path, logs=False)

    log = result.logs_path.read_text()
    seconds = float(EXIT_LINE.search(log)[1])
    print(f"\nSIGTERM->exit {entry_point} (process mode, Keras 2): {seconds:.1f} s")
    assert result.status == "Stopped" and result.stop_reason == "MaxRuntimeExceeded"
    done = result.stopped_after_epoch
    # Far less than the window, nothing SIGKILLed. Mid-training it is one step and the save; a
    # SIGTERM still in start-up (a loaded machine) waits for the first step.
    assert seconds < (WINDOW / 4 if done else WINDOW / 2), log[-3000:]
    assert "SIGKILLed" not in log
    assert result.metrics["stopped_by"] == "SIGTERM" and result.metrics["eval_accuracy"] is None
    assert [row["epoch"] for row in result.history] == list(range(1, done + 1))
    assert epoch_numbers(log, SLOW["epochs"]) == list(range(1, done + 1))
    assert log.count(f"stopped by SIGTERM after epoch {done}: model saved") == 1  # chief only
    job_model = result.model_artifact.parent / "model" / "1"
    assert log.count(f"saved model: {job_model} ") == 1  # one model, from the chief
    assert not (result.model_artifact.parent / "output" / "failure").exists()

    accuracy = served_accuracy(result.model_artifact, cifar_data_dir)
    if done:  # at least one epoch trained: better than chance (0.1)
        assert accuracy > 0.2
    fingerprints = FINGERPRINT.findall(log)
    if DISTRIBUTIONS[entry_point]:  # two ranks or workers: they stopped in step
        assert len(fingerprints) == 2 and len(set(fingerprints)) == 1, fingerprints


def sigterm_mid_epoch(proc, output_path, pids, deadline=240):
    """Wait for epoch 1's line in ``output_path``, SIGTERM ``pids()`` half a second later;
    returns the seconds from the signal to ``proc``'s exit."""
    limit = time.monotonic() + deadline
    while not re.search(r"^(?:\[[^\]]*\])?\s*epoch 1/", output_path.read_text(), re.M):
        assert proc.poll() is None and time.monotonic() < limit, output_path.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # into epoch 2
    sent = time.monotonic()
    for pid in pids():
        os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=WINDOW)
    return time.monotonic() - sent


@pytest.mark.parametrize("entry_point", ["train_keras.py", "train_tf.py"])
def test_keras3_entry_points_save_on_sigterm(entry_point, cifar_data_dir, tmp_path):
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            standalone(KERAS3_PYTHON, entry_point, cifar_data_dir, tmp_path, "--epochs", "30",
                       "--batch-size", "32", "--checkpoint-dir", str(tmp_path / "ckpt")),
            env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        seconds = sigterm_mid_epoch(proc, log_path, lambda: [proc.pid])
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log_path.read_text()
    print(f"\nSIGTERM->exit {entry_point} (Keras 3): {seconds:.1f} s")
    assert proc.returncode == 0, output[-3000:]
    assert seconds < WINDOW / 4
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert metrics["keras"].startswith("3.") and metrics["stopped_by"] == "SIGTERM"
    done = metrics["stopped_after_epoch"]
    assert done >= 1 and f"stopped by SIGTERM after epoch {done}: model saved" in output
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, done + 1))
    assert served_accuracy(tmp_path / "model", cifar_data_dir) > 0.2  # TF 2.15 serves it


def ranks_of(proc, script):
    import psutil

    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if script in " ".join(p.cmdline())]


@pytest.mark.parametrize("script", ["train_tf_horovod.py", "train_keras_horovod.py"])
def test_horovod_ranks_agree_when_only_one_gets_sigterm(script, cifar_data_dir, tmp_path):
    dirs = [rank_dirs(tmp_path, rank) for rank in range(2)]
    argv = mpirun_argv(sys.executable, script, cifar_data_dir, dirs,
                       ["--epochs", "30", "--batch-size", "32"])
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=SRC, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def rank_1():
            return [p.pid for p in ranks_of(proc, script)
                    if p.environ().get("OMPI_COMM_WORLD_RANK") == "1"]

        seconds = sigterm_mid_epoch(proc, log_path, rank_1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"\nSIGTERM (rank 1 only)->exit {script}: {seconds:.1f} s")
    check_agreed_stop(proc.returncode, log_path.read_text(), dirs, seconds)


def test_mwms_keras3_workers_agree_when_only_one_gets_sigterm(cifar_data_dir, tmp_path):
    dirs = [rank_dirs(tmp_path, rank) for rank in range(2)]
    logs = [tmp_path / "worker0.txt", tmp_path / "worker1.txt"]
    procs = start_mwms_workers(KERAS3_PYTHON, cifar_data_dir, dirs, ["--epochs", "30",
                               "--batch-size", "32"], logs, {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seconds = sigterm_mid_epoch(procs[0], logs[0], lambda: [procs[1].pid])
        procs[1].wait(timeout=WINDOW)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\nSIGTERM (worker 1 only)->exit train_tf_mwms.py (Keras 3): {seconds:.1f} s")
    codes = [abs(proc.returncode) for proc in procs]
    check_agreed_stop(max(codes), "".join(log.read_text() for log in logs), dirs, seconds)


def check_agreed_stop(returncode, output, dirs, seconds):
    assert returncode == 0, output[-3000:]
    assert seconds < WINDOW / 4
    fingerprints = FINGERPRINT.findall(output)
    assert len(fingerprints) == 2 and len(set(fingerprints)) == 1, output[-3000:]
    metrics = json.loads((dirs[0]["output"] / "metrics.json").read_text())
    done = metrics["stopped_after_epoch"]
    assert output.count(f"stopped by SIGTERM after epoch {done}: model saved") == 1
    assert (dirs[0]["model"] / "1" / "saved_model.pb").is_file()
    for path in dirs[1].values():  # rank/worker 1 saved nothing
        assert not path.exists() or not any(p.is_file() for p in Path(path).rglob("*"))


def test_resume_from_a_stopped_job_finishes_every_epoch_once(cifar_data_dir, tmp_path):
    """Stopped (as by StopTrainingJob: the same SIGTERM path as max_run, but at a known point:
    right after epoch 2's line), then resumed with RESUME_FROM's checkpoint location."""
    epochs, hyperparameters = 4, {"epochs": 4, "batch-size": 32}
    inputs = jobs.data_channels("process", cifar_data_dir)
    stop = threading.Event()

    def stop_after_epoch_2(line):
        if line.startswith("epoch 2/4 "):
            stop.set()

    first = jobs.workshop_estimator("process", "train_tf.py", hyperparameters)
    with pytest.warns(JobStoppedWarning):
        stopped = run_process_job(first, inputs, runs_dir=tmp_path, stream=None,
                                  on_line=stop_after_epoch_2, stop_request=stop)
    metrics = json.loads((stopped.output_data_dir / "metrics.json").read_text())
    assert stopped.status == "Stopped" and metrics["stopped_after_epoch"] == 2
    print(f"\nSIGTERM->exit train_tf.py (process mode, stop request): "
          f"{stopped.seconds_to_exit:.1f} s")

    again = jobs.workshop_estimator("process", "train_tf.py", hyperparameters, checkpoint=False)
    again.checkpoint_s3_uri = resume.checkpoint_to_resume("process", stopped.job_name,
                                                          runs_dir=tmp_path)
    resumed = jobs.run_in_process(again, inputs, runs_dir=tmp_path, logs=False)
    log = resumed.logs_path.read_text()
    assert resumed.status == "Completed"
    assert "resuming from checkpoint: epochs 1-2 done" in log
    assert epoch_numbers(log, epochs) == [3, 4]  # from N+1, nothing trained twice
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert resumed.metrics["eval_accuracy"] > 0.2

    whole = jobs.run_in_process(jobs.workshop_estimator("process", "train_tf.py", hyperparameters),
                                inputs, runs_dir=tmp_path, logs=False)
    assert [row["epoch"] for row in whole.history] == [1, 2, 3, 4]
    # The schedule went on where it was: epoch 3's learning rate is epoch 3's, not epoch 1's.
    np.testing.assert_allclose([row["lr"] for row in resumed.history],
                               [row["lr"] for row in whole.history], rtol=1e-5)
    assert resumed.history[2]["lr"] != pytest.approx(whole.history[0]["lr"], rel=1e-3)
