"""SIGTERM in the entry points, as SageMaker sends it at max_run, at StopTrainingJob or when a
spot instance is reclaimed: they stop at the end of the step under way, the chief saves the model
it has, and the job ends Stopped with a model that serves.

- process mode: a stop request (StopTrainingJob's path; max_run's deadline sends the same
  SIGTERM, tested on the probe in test_process_mode) -> Stopped, model.tar.gz serves uint8
  images, metrics.json records the stop, all within the 120 s window. Every entry point
  is stopped once: train_keras.py, train_tf_ddp.py and train_tf_mwms.py here, train_tf.py in the
  RESUME_FROM test, the two Horovod scripts in test_distributed (SIGTERM to one rank, the harder
  case: both must stop, then the job resumes);
- Keras 3 (.venv-keras3): the same scripts, SIGTERM sent by hand, then resumed to the end;
- MWMS on Keras 3: SIGTERM to ONE worker only -> both agree and stop at the same step, same
  weights everywhere, one saved model, which serves;
- RESUME_FROM: a stopped job resumed from its checkpoint location finishes every epoch once,
  with the learning rate where an uninterrupted run has it.

Every stop is sent at an event, the first epoch line (the second for the resume), never after
a number of seconds, so that it falls in the same place on a faster or a slower machine. Each
test prints ``SIGTERM->exit <entry point>: X s`` (run pytest with -s to see the figures).
"""

import json
import os
import re
import subprocess
import threading
import time

import pytest
from helpers import (
    KERAS3_PYTHON,
    WINDOW,
    check_agreed_stop,
    clean_env,
    epoch_line,
    epoch_numbers,
    rank_dirs,
    rank_lines,
    served_accuracy,
    sigterm_at_first_epoch,
    standalone,
    start_mwms_workers,
)

from workshop import jobs, resume
from workshop.process_mode.runner import JobStoppedWarning, run_process_job

# Stopped after epoch 1 of 4: one epoch at the full learning rate (warm-up 1 epoch) is enough to
# beat chance on the fixture data, and no machine finishes epochs 2-4 before the signal lands.
EPOCHS = 4
HYPERPARAMETERS = {"epochs": EPOCHS, "batch-size": 32, "learning-rate": 0.02,
                   "warmup-epochs": 1}
ARGS = [str(word) for key, value in HYPERPARAMETERS.items() for word in (f"--{key}", value)]
# Stopped by a stop request here; train_tf.py in the RESUME_FROM test, the Horovod scripts by
# SIGTERM to one rank in test_distributed (their two-rank run is stopped, then resumed).
DISTRIBUTIONS = {
    "train_keras.py": {},
    "train_tf_ddp.py": {"instance_count": 2},  # the distribution: the registry's
    "train_tf_mwms.py": {"instance_count": 2},
}
EXIT_LINE = re.compile(r"all processes ended ([\d.]+)s after SIGTERM")


def stopped_job(estimator, inputs, runs_dir, after_epoch=1):
    """The estimator's job in process mode, stopped as StopTrainingJob stops one as soon as the
    line of epoch ``after_epoch`` appears; its JobResult."""
    stop, line = threading.Event(), epoch_line(after_epoch)
    started = time.monotonic()
    with pytest.warns(JobStoppedWarning):
        job = run_process_job(estimator, inputs, runs_dir=runs_dir, stream=None,
                              on_line=lambda text: line.search(text) and stop.set(),
                              stop_request=stop)
    result = jobs.collect(estimator, "process", job.job_name, job.model_artifact,
                          job.output_data_dir, time.monotonic() - started, job.logs_path)
    return jobs.with_status(result, job.status, job.stop_reason, job.last_epoch)


@pytest.mark.parametrize("entry_point", list(DISTRIBUTIONS))
def test_a_stopped_job_keeps_a_model_that_serves(entry_point, cifar_data_dir, tmp_path):
    estimator = jobs.workshop_estimator("process", entry_point, HYPERPARAMETERS,
                                        **DISTRIBUTIONS[entry_point])
    result = stopped_job(estimator, jobs.data_channels("process", cifar_data_dir), tmp_path)
    check_stopped_job(result, entry_point, cifar_data_dir,
                      ranks=2 if DISTRIBUTIONS[entry_point] else 1)


def check_stopped_job(result, entry_point, data_dir, ranks=1):
    """Stopped within the window after the chief saved the model it had, which serves above
    chance; metrics.json and the log end at the same epoch; ranks in step."""
    log = result.logs_path.read_text()
    seconds = float(EXIT_LINE.search(log)[1])
    print(f"\nSIGTERM->exit {entry_point} (process mode, Keras 2): {seconds:.1f} s")
    assert result.status == "Stopped" and result.stop_reason == "Stopped"
    done = result.stopped_after_epoch
    assert 1 <= done < EPOCHS, log[-3000:]
    assert "SIGKILLed" not in log  # all exited within the window
    assert result.metrics["stopped_by"] == "SIGTERM" and result.metrics["eval_accuracy"] is None
    assert [row["epoch"] for row in result.history] == list(range(1, done + 1))
    assert epoch_numbers(log, EPOCHS) == list(range(1, done + 1))
    assert log.count(f"stopped by SIGTERM after epoch {done}: model saved") == 1  # chief only
    job_model = result.model_artifact.parent / "model" / "1"
    assert log.count(f"saved model: {job_model} ") == 1  # one model, from the chief
    assert not (result.model_artifact.parent / "output" / "failure").exists()
    assert served_accuracy(result.model_artifact, data_dir) > 0.2  # chance: 0.1
    fingerprints = [line[6] for line in rank_lines(log)]
    if ranks > 1:  # two ranks or workers: they stopped in step
        assert len(fingerprints) == 2 and len(set(fingerprints)) == 1, fingerprints
    return done


@pytest.mark.parametrize("entry_point", ["train_keras.py", "train_tf.py"])
def test_keras3_entry_points_stop_on_sigterm_then_resume_and_serve(entry_point, cifar_data_dir,
                                                                   tmp_path):
    """The 2.21 training image is Keras 3: the scripts on TF 2.21 / Keras 3 (.venv-keras3) stop
    on SIGTERM, the same command then resumes and finishes, and TF 2.21 and TF 2.15 (this
    process; the serving image is 2.20) both serve what they saved."""
    command = standalone(KERAS3_PYTHON, entry_point, cifar_data_dir, tmp_path, *ARGS,
                         "--checkpoint-dir", str(tmp_path / "ckpt"))
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        seconds = sigterm_at_first_epoch(proc, log_path, lambda: [proc.pid])
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log_path.read_text()
    print(f"\nSIGTERM->exit {entry_point} (Keras 3): {seconds:.1f} s")
    assert proc.returncode == 0, output[-3000:]
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert metrics["keras"].startswith("3.") and metrics["tensorflow"].startswith("2.21")
    assert metrics["stopped_by"] == "SIGTERM"
    done = metrics["stopped_after_epoch"]
    assert 1 <= done < EPOCHS and f"stopped by SIGTERM after epoch {done}: model saved" in output
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, done + 1))

    resumed = subprocess.run(command, env=clean_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint: epochs 1-{done} done" in resumed.stdout
    assert epoch_numbers(resumed.stdout, EPOCHS) == list(range(done + 1, EPOCHS + 1))
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, EPOCHS + 1))
    assert metrics["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1
    check = ("import sys, tensorflow as tf; "
             "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']; "
             "print(f(image=tf.zeros([3, 32, 32, 3], tf.uint8))['class_id'].shape)")
    loaded = subprocess.run([str(KERAS3_PYTHON), "-c", check, str(tmp_path / "model" / "1")],
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "(3,)", loaded.stderr[-2000:]
    assert served_accuracy(tmp_path / "model", cifar_data_dir) == pytest.approx(
        metrics["eval_accuracy"], abs=0.01)


def test_mwms_keras3_workers_agree_when_only_one_gets_sigterm(cifar_data_dir, tmp_path):
    dirs = [rank_dirs(tmp_path, rank) for rank in range(2)]
    logs = [tmp_path / "worker0.txt", tmp_path / "worker1.txt"]
    procs = start_mwms_workers(KERAS3_PYTHON, cifar_data_dir, dirs, ARGS, logs,
                               {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seconds = sigterm_at_first_epoch(procs[0], logs[0], lambda: [procs[1].pid])
        procs[1].wait(timeout=WINDOW)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\nSIGTERM (worker 1 only)->exit train_tf_mwms.py (Keras 3): {seconds:.1f} s")
    codes = [abs(proc.returncode) for proc in procs]
    check_agreed_stop(max(codes), "".join(log.read_text() for log in logs), dirs, cifar_data_dir)


def test_resume_from_a_stopped_job_finishes_every_epoch_once(cifar_data_dir, tmp_path):
    """Stopped as by StopTrainingJob right after epoch 2's line, then resumed with RESUME_FROM's
    checkpoint location."""
    inputs = jobs.data_channels("process", cifar_data_dir)
    first = jobs.workshop_estimator("process", "train_tf.py", HYPERPARAMETERS)
    stopped = stopped_job(first, inputs, tmp_path, after_epoch=2)
    assert check_stopped_job(stopped, "train_tf.py", cifar_data_dir) == 2

    again = jobs.workshop_estimator("process", "train_tf.py", HYPERPARAMETERS, checkpoint=False)
    again.checkpoint_s3_uri = resume.checkpoint_to_resume("process", stopped.job_name,
                                                          runs_dir=tmp_path)
    resumed = jobs.run_in_process(again, inputs, runs_dir=tmp_path, logs=False)
    log = resumed.logs_path.read_text()
    assert resumed.status == "Completed"
    assert "resuming from checkpoint: epochs 1-2 done" in log
    assert epoch_numbers(log, EPOCHS) == [3, 4]  # from N+1, nothing trained twice
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert resumed.metrics["eval_accuracy"] > 0.2
    # The schedule went on where it was. Past the warm-up (epoch 1) it falls by the same step
    # every epoch; a run that restarted it would have epoch 3 in the warm-up again.
    rates = [row["lr"] for row in resumed.history]
    assert rates[1] > rates[2] > rates[3]
    assert rates[1] - rates[2] == pytest.approx(rates[2] - rates[3], rel=1e-3)
