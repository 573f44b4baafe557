"""What several test files need, written once: launching the scripts as SageMaker does (mpirun's
MPMD line, MultiWorkerMirroredStrategy workers with TF_CONFIG, a script run standalone), stopping
one rank or worker at an event, stopping a notebook's process-mode job at its first epoch line,
reading what they print, scoring a model's serving signature as an endpoint would, and checking a
local-mode job (its model, the metrics SageMaker would chart, its ranks)."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

from workshop import RUNS_DIR, SRC_DIR, dataset, jobs, run_notebooks
from workshop.files import free_ports
from workshop.log_format import parse_epoch_line
from workshop.process_mode.runner import STOP_FILE, YIELD_WHEN_IDLE
from workshop.serving import inference

ROOT = Path(__file__).resolve().parents[1]
SRC = SRC_DIR
KERAS3_PYTHON = ROOT / ".venv-keras3" / "bin" / "python"
MPIRUN = shutil.which("mpirun")
# The line every distributed script prints at the end, per rank (Horovod, SMDDP) or worker
# (MWMS); not anchored, since local mode's docker compose prefixes each line with its host.
RANK_LINE = re.compile(r"\b(rank|worker) (\d+)/(\d+): trained on (\d+) records/epoch "
                       r"\(shard (\d+) of (\d+)\), weights fingerprint ([0-9a-f]{8})")


def rank_lines(text):
    """[(kind, rank, size, records, shard, shards, fingerprint)] of every rank line in ``text``."""
    return [match.groups() for match in RANK_LINE.finditer(text)]


# What conftest.notebook_run gives the training notebooks it runs once for many tests, and what
# the local-mode tests give theirs (conftest.local_1_2 too).
NOTEBOOK_RUN = {"EPOCHS": 2, "BATCH_SIZE": 64}
LOCAL_RUN = {"EPOCHS": 2, "BATCH_SIZE": 32, "LEARNING_RATE": 0.02}


@contextlib.contextmanager
def stop_at_first_epoch_line(runs_dir=RUNS_DIR):
    """StopTrainingJob (runs/<job>/stop) for the first process-mode job that the block starts,
    as soon as its log holds an epoch line: for a notebook, whose kernel runs the job."""
    runs_dir = Path(runs_dir)
    before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
    finished = threading.Event()

    def watch():
        while not finished.wait(0.2):
            for job_dir in (set(runs_dir.iterdir()) if runs_dir.exists() else set()) - before:
                logs = job_dir / "logs.txt"
                text = logs.read_text(errors="replace") if logs.exists() else ""
                if any(parse_epoch_line(line) for line in text.splitlines()):
                    (job_dir / STOP_FILE).touch()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join()


def notebook_path(number):
    """The (English) notebook numbered ``number`` ("1.2")."""
    (path,) = run_notebooks.notebooks(only=[number])
    return path


def run_notebook(output_dir, number, parameters, expect=("Completed",)):
    """Execute a notebook headless as CI does; (its RESULT dict, the executed notebook)."""
    path = notebook_path(number)
    outcome = run_notebooks.execute(path, parameters, output_dir=output_dir, expect=expect)
    assert outcome["ok"], f"{path.name}: {outcome['error']}"
    assert outcome["result"] is not None, f"{path.name} printed no RESULT line"
    return outcome["result"], nbformat.read(outcome["output"], as_version=4)


def job_folder(result):
    """A process-mode job's folder (runs/<job>/), from the RESULT line of its notebook."""
    return RUNS_DIR / result["job_name"]


def output_text(notebook):
    """Everything an executed notebook printed (its stream outputs), joined."""
    return "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


def served_accuracy(model, data_dir, count=None):
    """Accuracy of a model's serving signature (``model.tar.gz`` or its folder) on the first
    ``count`` eval images (all by default), as an endpoint would serve them. A tarball must hold
    the SavedModel at ``1/`` and no checkpoint."""
    if os.path.isfile(model) and tarfile.is_tarfile(model):
        with tarfile.open(model) as tar:
            names = [name.removeprefix("./") for name in tar.getnames()]
        assert "1/saved_model.pb" in names and not any("checkpoint" in n for n in names), names
    images, labels = dataset.read_examples(data_dir, "eval", count=count)
    predicted = inference.predict_classes(inference.load_signature(model), images)
    return float((predicted == labels).mean())


def rank_dirs(base, rank):
    return {key: base / f"rank{rank}" / key for key in ("model", "output", "ckpt")}


def script_args(data_dir, dirs):
    return ["--train", str(data_dir / "train"), "--validation", str(data_dir / "validation"),
            "--eval", str(data_dir / "eval"), "--sm-model-dir", str(dirs["model"]),
            "--output-data-dir", str(dirs["output"]), "--checkpoint-dir", str(dirs["ckpt"])]


def mpirun_argv(python, script, data_dir, dirs, hyperparameters):
    """mpirun with one app context per rank (MPMD), each with its own output folders, so that a
    test sees what rank 1 writes (it must write nothing). Waiting ranks yield, as in process
    mode."""
    argv = [MPIRUN, "--allow-run-as-root", "--oversubscribe", *YIELD_WHEN_IDLE]
    for rank, rank_dir in enumerate(dirs):
        argv += ([":"] if rank else []) + ["-np", "1", str(python), script,
                                           *script_args(data_dir, rank_dir), *hyperparameters]
    return argv


def start_mwms_workers(python, data_dir, dirs, hyperparameters, logs, env):
    """One ``train_tf_mwms.py`` worker per entry of ``dirs`` on free loopback ports, each with the
    TF_CONFIG SageMaker sets; ``logs``: per worker (stdout, stderr) paths, or one path for both.
    Returns the processes (each its own session, so a test can kill its group)."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(len(dirs))]
    procs = []
    for index, (dirs_of, log) in enumerate(zip(dirs, logs)):
        tf_config = {"cluster": {"worker": workers}, "environment": "cloud",
                     "task": {"type": "worker", "index": index}}
        out, err = (log, None) if isinstance(log, (str, os.PathLike)) else log
        with open(out, "w") as stdout, open(err or os.devnull, "w") as stderr:
            procs.append(subprocess.Popen(
                [str(python), "train_tf_mwms.py", *script_args(data_dir, dirs_of),
                 *hyperparameters], cwd=SRC, env={**env, "TF_CONFIG": json.dumps(tf_config)},
                stdout=stdout, stderr=stderr if err else subprocess.STDOUT,
                start_new_session=True))
    return procs


def standalone(python, entry_point, data_dir, out, *extra):
    """The script as people copy it: explicit paths, no SageMaker variables."""
    return [str(python), str(SRC / entry_point),
            "--train", str(data_dir / "train"), "--validation", str(data_dir / "validation"),
            "--eval", str(data_dir / "eval"), "--sm-model-dir", str(out / "model"),
            "--output-data-dir", str(out / "output"), *extra]


def clean_env():
    """This environment without SageMaker's SM_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SM_")}


# ---- SIGTERM at an event ------------------------------------------------------------------------

WINDOW = 120  # seconds SageMaker waits after SIGTERM; process mode's default grace


def epoch_line(number):
    """Matches the line an entry point prints at the end of epoch ``number`` (any prefix)."""
    return re.compile(rf"(?:^|[\s\]:])epoch {number}/\d+ ", re.M)


def epoch_numbers(text, epochs):
    """The epochs of ``epochs`` whose line ``text`` holds, in order."""
    return [int(n) for n in re.findall(rf"^(?:\[[^\]]*\] )?epoch (\d+)/{epochs} ", text, re.M)]


def sigterm_at_first_epoch(proc, output_path, pids, deadline=240):
    """SIGTERM to ``pids()`` as soon as epoch 1's line is in ``output_path``; returns the seconds
    from the signal to ``proc``'s exit."""
    limit, line = time.monotonic() + deadline, epoch_line(1)
    while not line.search(output_path.read_text()):
        assert proc.poll() is None and time.monotonic() < limit, output_path.read_text()[-3000:]
        time.sleep(0.1)
    sent = time.monotonic()
    for pid in pids():
        os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=WINDOW)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running {WINDOW} s after SIGTERM: SageMaker would SIGKILL "
                             "it and keep whatever /opt/ml/model held then") from None
    return time.monotonic() - sent


def mpi_rank_pids(proc, script, rank):
    """PIDs of ``script``'s rank ``rank`` under the mpirun ``proc``."""
    import psutil

    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
            if script in " ".join(p.cmdline()) and p.environ().get("OMPI_COMM_WORLD_RANK") ==
            str(rank)]


def check_agreed_stop(returncode, output, dirs, data_dir):
    """After SIGTERM to rank/worker 1 only (sent by ``sigterm_at_first_epoch``, which fails
    past the window): every process exited 0 after the same step (one weights fingerprint), the
    chief alone saved a model, which serves above chance, and rank/worker 1 wrote nothing.
    Returns the epochs done."""
    assert returncode == 0, output[-3000:]
    fingerprints = [line[6] for line in rank_lines(output)]
    assert len(fingerprints) == 2 and len(set(fingerprints)) == 1, output[-3000:]
    metrics = json.loads((dirs[0]["output"] / "metrics.json").read_text())
    done = metrics["stopped_after_epoch"]
    assert output.count(f"stopped by SIGTERM after epoch {done}: model saved") == 1
    assert served_accuracy(dirs[0]["model"], data_dir) > 0.2  # chance: 0.1
    for path in dirs[1].values():  # rank/worker 1 saved nothing
        assert not path.exists() or not any(p.is_file() for p in Path(path).rglob("*"))
    return done


# ------------------------------------------------ local-mode jobs (test_local_mode, test_images)

# The stand-in images' ECR registry (containers/build_images.py tags them with it), and what a
# container of one reports about itself.
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
