"""The distributed entry points, run for real with 2 processes on this machine's CPUs.

Horovod and SMDDP scripts are started the way SageMaker's MPI launcher does it, with ``mpirun``,
as two MPMD app contexts so that rank 1 gets its own output folders (it must write nothing).
MultiWorkerMirroredStrategy runs as two processes with the TF_CONFIG SageMaker sets, on free
loopback ports, under TF 2.15 (Keras 2) and TF 2.21 (Keras 3: select with ``-k keras3``).
Per run: exit 0, identical weight fingerprints on both ranks, disjoint shards covering the data,
artifacts from rank 0 only, the scaled learning rate, accuracy above chance. A Horovod run lives
its whole life once: SIGTERM to rank 1 only as epoch 1's line appears (both ranks stop after the
same step, rank 0 alone saves a model that serves), then the same command again, which resumes
from rank 0's checkpoint and trains only the epochs left; the checks above run on its end. Also:
a killed rank fails the job quickly, and every block a distributed script adds to the script it
extends opens with its marker (``# Horovod:`` ...).
"""

import ast
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from helpers import (
    KERAS3_PYTHON,
    SRC,
    check_agreed_stop,
    epoch_numbers,
    mpi_rank_pids,
    mpirun_argv,
    rank_dirs,
    rank_lines,
    sigterm_at_first_epoch,
    start_mwms_workers,
)

from workshop.entry_points import ENTRY_POINTS

TRAIN_RECORDS = 1024
BASE_LR = 0.02
# 4 epochs of 16 steps per rank; the small batch and learning rate make the synthetic data
# learnable in that budget (chance is 0.1). Four, so that the weight averaging (Lookahead,
# from epoch 3's end on) runs on every rank within the run.
EPOCHS = 4
HYPERPARAMETERS = ["--epochs", str(EPOCHS), "--batch-size", "32", "--learning-rate",
                   str(BASE_LR), "--warmup-epochs", "1"]
RUN_TIMEOUT = 300
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

@dataclass
class Job:
    name: str
    returncode: int = None
    output: str = ""  # stdout of all ranks
    errors: str = ""  # stderr of all ranks
    seconds: float = 0.0
    dirs: list = field(default_factory=list)  # per rank: {"model", "output", "ckpt"} -> Path
    stopped: "Job" = None  # the run stopped by SIGTERM to rank 1, which this one resumed

    def rank_lines(self):
        return rank_lines(self.output)

    def metrics(self):
        return json.loads((self.dirs[0]["output"] / "metrics.json").read_text())


def environment(**extra):
    return {**os.environ, **QUIET, **extra}


def stop(proc):
    """Kill a process we started, and its process group (its ranks or workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_mpi(name, script, data_dir, base, hyperparameters=HYPERPARAMETERS, dirs=None):
    dirs = dirs or [rank_dirs(base, rank) for rank in range(2)]
    started = time.monotonic()
    proc = subprocess.Popen(mpirun_argv(sys.executable, script, data_dir, dirs, hyperparameters),
                            cwd=SRC,
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        output, errors = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        stop(proc)
    return Job(name, proc.returncode, output, errors, time.monotonic() - started, dirs)


def run_mpi_stopped_then_resumed(name, script, data_dir, base):
    """SIGTERM to rank 1 only as epoch 1's line appears (a spot reclaim or max_run reaching one
    host first), then the same command on the same folders: it resumes from rank 0's checkpoint
    (rank 1 has none: it gets the state by broadcast) and finishes. The resumed run's Job, with
    the stopped one in ``stopped`` (its rank 0 folders: copies of what it left)."""
    dirs = [rank_dirs(base, rank) for rank in range(2)]
    base.mkdir(parents=True, exist_ok=True)
    log_path = base / "stopped.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(mpirun_argv(sys.executable, script, data_dir, dirs,
                                            HYPERPARAMETERS), cwd=SRC, env=environment(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seconds = sigterm_at_first_epoch(proc, log_path,
                                         lambda: mpi_rank_pids(proc, script, rank=1))
    finally:
        stop(proc)
    print(f"\nSIGTERM (rank 1 only)->exit {script}: {seconds:.1f} s")
    # What rank 0 had when it stopped, kept aside: the resumed run replaces model and metrics.
    kept = dict(dirs[0], model=base / "stopped" / "model", output=base / "stopped" / "output")
    for key in ("model", "output"):
        if dirs[0][key].is_dir():
            shutil.copytree(dirs[0][key], kept[key])
    stopped = Job(f"{name} (stopped)", proc.returncode, log_path.read_text(), "", seconds,
                  [kept, dirs[1]])
    resumed = run_mpi(name, script, data_dir, base, dirs=dirs)
    resumed.stopped = stopped
    return resumed


def run_mwms(name, python, data_dir, base, hyperparameters=HYPERPARAMETERS):
    """Two workers with SageMaker's TF_CONFIG; if one fails, the other is stopped."""
    dirs = [rank_dirs(base, rank) for rank in range(2)]
    logs = [(base / f"worker{index}.out", base / f"worker{index}.err") for index in range(2)]
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = start_mwms_workers(python, data_dir, dirs, hyperparameters, logs, environment())
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            stop(proc)
    returncode = max((abs(p.returncode) for p in procs), default=0)
    output, errors = ("".join(log[i].read_text() for log in logs) for i in (0, 1))
    return Job(name, returncode, output, errors, time.monotonic() - started, dirs)


HOROVOD = {"keras_horovod": "train_keras_horovod.py", "tf_horovod": "train_tf_horovod.py"}
JOBS = {
    **{name: (lambda data, base, name=name, script=script:
              run_mpi_stopped_then_resumed(name, script, data, base))
       for name, script in HOROVOD.items()},
    "tf_ddp": lambda data, base: run_mpi("tf_ddp", "train_tf_ddp.py", data, base),
    "tf_mwms": lambda data, base: run_mwms("tf_mwms", sys.executable, data, base),
    "tf_mwms_keras3": lambda data, base: run_mwms("tf_mwms_keras3", KERAS3_PYTHON, data, base),
}


def job_params():
    # No skips: `make test` sets up mpirun, Horovod and .venv-keras3 first (test_setup.py).
    for name in JOBS:
        yield pytest.param(name, id=name)


_finished = {}


def finished(name, data_dir, tmp_path_factory):
    """The 2-process training run of one script, run once per session."""
    if name not in _finished:
        _finished[name] = JOBS[name](data_dir, tmp_path_factory.mktemp(name))
    result = _finished[name]
    assert result.returncode == 0, (f"{name} failed:\n{result.output[-3000:]}\n"
                                    f"{result.errors[-3000:]}")
    return result


@pytest.fixture(scope="module", params=list(job_params()))
def job(request, cifar_data_dir, tmp_path_factory):
    return finished(request.param, cifar_data_dir, tmp_path_factory)


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# ---- every run ---------------------------------------------------------------------------------

def test_ranks_hold_identical_weights_after_training_on_disjoint_shards(job):
    lines = sorted(job.rank_lines(), key=lambda groups: int(groups[1]))
    assert [(int(g[1]), int(g[2])) for g in lines] == [(0, 2), (1, 2)], job.output[-3000:]
    assert [(int(g[4]), int(g[5])) for g in lines] == [(0, 2), (1, 2)]  # shard r of 2
    assert sum(int(g[3]) for g in lines) == TRAIN_RECORDS
    fingerprints = {g[6] for g in lines}
    assert len(fingerprints) == 1, f"ranks diverged: {lines}"


def test_only_rank_0_writes_model_checkpoints_and_metrics(job):
    rank0, rank1 = job.dirs
    assert (rank0["model"] / "1" / "saved_model.pb").is_file()
    assert any(p.name.endswith(".index") for p in files_under(rank0["ckpt"]))
    assert (rank0["output"] / "metrics.json").is_file()
    for path in rank1.values():
        assert files_under(path) == [], f"rank 1 wrote into {path}"


def test_learning_rate_is_scaled_by_the_number_of_processes(job):
    metrics = job.metrics()
    assert metrics["workers"] == 2
    assert metrics["peak_learning_rate"] == pytest.approx(2 * BASE_LR)
    # End of epoch 1 is past the warm-up, early in the cosine decay of the 2 x base peak:
    # above the base rate only if the peak was scaled.
    assert BASE_LR < metrics["history"][0]["lr"] <= 2 * BASE_LR


def test_metrics_cover_all_ranks_and_beat_chance(job):
    metrics = job.metrics()
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, EPOCHS + 1))
    assert metrics["eval_accuracy"] > 0.3, metrics
    for row in metrics["history"]:  # global images/s: all ranks' records over the epoch time
        assert row["images_per_sec"] == pytest.approx(TRAIN_RECORDS / row["seconds"], rel=0.02)
    assert len(re.findall(r"^eval - loss", job.output, re.M)) == 1  # logged once, by rank 0
    assert len(re.findall(rf"^epoch {EPOCHS}/{EPOCHS} ", job.output, re.M)) == 1


def test_ddp_names_its_backend_first(cifar_data_dir, tmp_path_factory):
    first = finished("tf_ddp", cifar_data_dir, tmp_path_factory).output.splitlines()[0]
    assert first == "backend: horovod.tensorflow", first  # SMDDP is not installed here


# ---- Horovod: one rank stopped, then resumed; failure -------------------------------------------

@pytest.fixture(scope="module", params=list(HOROVOD))
def horovod_job(request, cifar_data_dir, tmp_path_factory):
    return finished(request.param, cifar_data_dir, tmp_path_factory)


def test_sigterm_to_one_rank_stops_both_after_the_same_step(horovod_job, cifar_data_dir):
    stopped = horovod_job.stopped
    done = check_agreed_stop(stopped.returncode, stopped.output, stopped.dirs, cifar_data_dir)
    assert 1 <= done < EPOCHS, stopped.output[-3000:]
    assert epoch_numbers(stopped.output, EPOCHS) == list(range(1, done + 1))


def test_the_resumed_run_trains_only_the_epochs_left(horovod_job):
    """From rank 0's checkpoint; rank 1 has none and ends with the same weights (the rank
    lines' check above), so it got rank 0's state."""
    done = max(epoch_numbers(horovod_job.stopped.output, EPOCHS))
    assert f"resuming from checkpoint: epochs 1-{done} done" in horovod_job.output
    assert epoch_numbers(horovod_job.output, EPOCHS) == list(range(done + 1, EPOCHS + 1))
    assert [row["epoch"] for row in horovod_job.metrics()["history"]] == list(
        range(1, EPOCHS + 1))
    assert "stopped_by" not in horovod_job.metrics()


def test_a_killed_rank_fails_the_job_quickly(cifar_data_dir, tmp_path):
    import psutil
    dirs = [rank_dirs(tmp_path, rank) for rank in range(2)]
    hyperparameters = ["--epochs", "50", "--batch-size", "32"]
    log_path = tmp_path / "mpirun.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            mpirun_argv(sys.executable, "train_tf_horovod.py", cifar_data_dir, dirs,
                        hyperparameters), cwd=SRC,
            env=environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "epoch 1/50" not in log_path.read_text():  # training is under way
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "train_tf_horovod.py" in " ".join(p.cmdline())]
        assert len(ranks) == 2
        rank1 = next(p for p in ranks if p.environ().get("OMPI_COMM_WORLD_RANK") == "1")
        rank1.send_signal(signal.SIGKILL)
        returncode = proc.wait(timeout=60)
        assert returncode != 0
        _, alive = psutil.wait_procs(ranks, timeout=10)
        assert alive == [], f"ranks left running: {alive}"
    finally:
        stop(proc)


# ---- the data shards, in process --------------------------------------------------------------

def test_shards_are_disjoint_and_cover_every_record(cifar_data_dir):
    from cifar import data

    def digests(**shard):
        dataset = data.make_dataset(str(cifar_data_dir / "train"), 100, training=False,
                                    channel="train", **shard)
        return [hashlib.sha1(image.tobytes()).hexdigest() + f"/{label}"
                for images, labels in dataset.as_numpy_iterator()
                for image, label in zip(images, labels)]

    everything = digests()
    shards = [digests(num_workers=2, worker_index=index) for index in range(2)]
    assert len(everything) == len(set(everything)) == TRAIN_RECORDS
    assert [len(s) for s in shards] == [TRAIN_RECORDS // 2] * 2
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(everything)


# ---- the scripts' text --------------------------------------------------------------------------

DISTRIBUTED = [entry for entry in ENTRY_POINTS if entry.distributed]


@pytest.mark.parametrize("entry", DISTRIBUTED, ids=[entry.script for entry in DISTRIBUTED])
def test_every_block_added_to_the_base_opens_with_its_marker(entry):
    """Each group of changed lines against the script it extends (a hunk of the diff with one
    line of context; the notebook prints three) adds a comment line that starts with the marker,
    as Horovod's examples put a sentence above each block. The module docstring needs none."""
    text = (SRC / entry.script).read_text()
    docstring_end = ast.parse(text).body[0].end_lineno
    base = (SRC / entry.diff_base).read_text()
    diff = "\n".join(difflib.unified_diff(base.splitlines(), text.splitlines(), n=1,
                                          lineterm=""))
    unmarked = []
    for hunk in re.split(r"^(?=@@ )", diff, flags=re.M)[1:]:
        number = int(re.match(r"@@ -\S+ \+(\d+)", hunk).group(1))
        added = []
        for line in hunk.splitlines()[1:]:
            if line.startswith("+") and number > docstring_end:
                added.append(line[1:].strip())
            number += not line.startswith("-")
        if added and not any(line.startswith(entry.marker) for line in added):
            unmarked.append(hunk)
    assert unmarked == [], f"{entry.script}: hunks with no '{entry.marker}' comment:\n" + \
        "\n".join(unmarked)


def test_smddp_diff_shows_only_what_smddp_changes():
    """3.1 prints train_tf_ddp.py against train_tf_horovod.py: SMDDP keeps Horovod's calls, so
    below the docstrings only a dozen lines of code differ."""
    def code(script):
        text = (SRC / script).read_text()
        lines = text.splitlines()[ast.parse(text).body[0].end_lineno:]
        return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]

    changed = [line for line in difflib.unified_diff(code("train_tf_horovod.py"),
                                                     code("train_tf_ddp.py"), lineterm="", n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(changed) <= 16, "\n".join(changed)
    assert any("oob_allreduce" in line for line in changed)
