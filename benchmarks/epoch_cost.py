"""What each training notebook's defaults cost on this machine: s/step, s/epoch, minutes, max_run.

  .venv/bin/python benchmarks/epoch_cost.py [--per-batch 640] [--epochs 2]

For every training notebook, reads EPOCHS, BATCH_SIZE, INSTANCE_COUNT and MAX_RUN from its
``parameters`` cell, and runs its entry point in process mode (as the notebook does: INSTANCE_COUNT
simulated hosts, one process each) for ``--epochs`` epochs on synthetic CIFAR-10
(tests/synthetic_cifar.py, ``--per-batch`` images per batch file, so train = 4 x that). From the
epoch log lines, as they arrive:

  s/step       the last epoch's training time (its ``time:``) / its steps per process
  val s        the rest of that epoch (validation), scaled to 10,000 validation images
  start-up s   from the job's start to the end of epoch 1, less epoch 1 at the measured pace
  s/epoch      s/step x the steps of 40,000 training images at that batch size and process count,
               plus val s: what a real CIFAR-10 epoch would take here
  min for EPOCHS  (start-up + EPOCHS x s/epoch) / 60, and whether that fits in MAX_RUN and in
               the 10 minutes a notebook's defaults should take here. EPOCHS = None in a
               parameters cell means the notebook's own line for process mode
               (``EPOCHS = 20 if MODE == "host" else 3``): this machine runs process mode.

The last line is ``RESULT {json}``: each notebook's minutes, EPOCHS and s/epoch, and the most
minutes any notebook's defaults take.

1.1 trains in the notebook's kernel with the same model.fit loop as train_keras.py: its row runs
train_keras.py and has no MAX_RUN. On a shared machine the figures vary with the load.
"""

import argparse
import ast
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests"), str(ROOT / "code" / "phase0")]

from entry_points import make_data  # noqa: E402

from workshop import PHASE0_DIR, jobs  # noqa: E402
from workshop.log_format import parse_epoch_line  # noqa: E402
from workshop.process_mode.runner import run_process_job  # noqa: E402

TRAIN_IMAGES = 40_000
VALIDATION_IMAGES = 10_000
NOTEBOOKS = [  # (notebook, entry point, distribution for INSTANCE_COUNT hosts)
    ("1.1.Train-Scratch", "train_keras.py", None),
    ("1.2.Train_Keras_Local_Script_Mode", "train_keras.py", None),
    ("2.1.Train_TF_Local_Script_Mode", "train_tf.py", None),
    ("1.5.Train_Keras_Horovod", "train_keras_horovod.py",
     {"mpi": {"enabled": True, "processes_per_host": 1}}),
    ("2.2.Train_TF_Horovod", "train_tf_horovod.py",
     {"mpi": {"enabled": True, "processes_per_host": 1}}),
    ("3.1.Train-TF-DDP", "train_tf_ddp.py",
     {"smdistributed": {"dataparallel": {"enabled": True}}}),
    ("3.2.Train-TF-MultiWorkerMirrored", "train_tf_mwms.py",
     {"multi_worker_mirrored_strategy": {"enabled": True}}),
]


def notebook_defaults(notebook):
    """The literal assignments of a notebook's ``parameters`` cell."""
    import nbformat

    book = nbformat.read(PHASE0_DIR / f"{notebook}.ipynb", as_version=4)
    (cell,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            values[node.targets[0].id] = node.value.value
    return values


def process_mode_epochs(notebook, defaults):
    """EPOCHS as the notebook runs it in process mode: the literal, or for None the value its
    own code cell picks when MODE is not "host"."""
    if defaults["EPOCHS"] is not None:
        return int(defaults["EPOCHS"])
    import nbformat

    book = nbformat.read(PHASE0_DIR / f"{notebook}.ipynb", as_version=4)
    source = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    match = re.search(r'EPOCHS = \d+ if MODE == "host" else (\d+)', source)
    if not match:
        raise SystemExit(f"{notebook}: EPOCHS = None, but no per-mode EPOCHS line found")
    return int(match.group(1))


class EpochClock:
    """Log hook: (seconds into the job, parsed epoch line) of every epoch line."""

    def __init__(self):
        self.started, self.epochs, self.lock = time.monotonic(), [], threading.Lock()

    def __call__(self, line):
        parsed = parse_epoch_line(line)
        if parsed:
            with self.lock:
                self.epochs.append((time.monotonic() - self.started, parsed))


def measure(notebook, entry_point, distribution, data_dir, runs, epochs, train_images,
            validation_images):
    defaults = notebook_defaults(notebook)
    batch, hosts = int(defaults["BATCH_SIZE"]), int(defaults.get("INSTANCE_COUNT", 1))
    processes = hosts if distribution else 1
    estimator = jobs.workshop_estimator(
        "process", entry_point, {"epochs": epochs, "batch-size": batch},
        instance_count=hosts if distribution else 1, checkpoint=False)
    clock = EpochClock()
    run_process_job(estimator, jobs.data_channels("process", data_dir), runs_dir=runs,
                    stream=None, on_line=clock)
    first_at, (last_at, last) = clock.epochs[0][0], clock.epochs[-1]
    steps = -(-train_images // processes // batch)  # per process, the last batch partial
    step_seconds = last.seconds / steps
    rest = (last_at - clock.epochs[-2][0]) - last.seconds  # validation and checkpoint
    validation = rest * VALIDATION_IMAGES / validation_images
    startup = max(first_at - step_seconds * steps - rest, 0.0)
    epoch_seconds = step_seconds * -(-TRAIN_IMAGES // processes // batch) + validation
    epochs_here = process_mode_epochs(notebook, defaults)
    total = startup + epochs_here * epoch_seconds
    max_run = defaults.get("MAX_RUN")
    if max_run is None:
        fits = "-"
    else:
        fits = "yes" if total <= max_run else \
            f"no: {int(max(max_run - startup, 0) // epoch_seconds)} epochs"
    return {"notebook": notebook[:3],
            "entry point": entry_point, "procs": processes, "batch": batch,
            "s/step": step_seconds, "val s": validation, "start-up s": startup,
            "s/epoch": epoch_seconds, "EPOCHS": epochs_here, "min": total / 60,
            "MAX_RUN": max_run, "fits": fits, "<= 10 min": "yes" if total <= 600 else "no"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-batch", type=int, default=640, help="train = 4 x this")
    parser.add_argument("--epochs", type=int, default=2, help="timed: the last one (>= 2)")
    parser.add_argument("--only", help="a regex on notebook names")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch includes tracing")
    with tempfile.TemporaryDirectory(prefix="epoch-cost-") as tmp:
        tmp = Path(tmp)
        data_dir = make_data(tmp, args.per_batch)
        rows = []
        for notebook, entry_point, distribution in NOTEBOOKS:
            if args.only and not re.search(args.only, notebook):
                continue
            rows.append(measure(notebook, entry_point, distribution, data_dir,
                                tmp / "runs", args.epochs, 4 * args.per_batch, args.per_batch))
            print_row(rows[-1], header=len(rows) == 1)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs; "
          f"other work on the machine slows every figure above")
    per_notebook = {row["notebook"]: {"minutes": round(row["min"], 1), "epochs": row["EPOCHS"],
                                      "seconds_per_epoch": round(row["s/epoch"], 1)}
                    for row in rows}
    print("RESULT " + json.dumps({"notebooks": per_notebook, "max_minutes": max(
        (row["min"] for row in rows), default=None)}))


COLUMNS = [("notebook", "{}", 8), ("entry point", "{}", 23), ("procs", "{}", 5),
           ("batch", "{}", 5), ("s/step", "{:.3f}", 7), ("val s", "{:.1f}", 6),
           ("start-up s", "{:.0f}", 10), ("s/epoch", "{:.0f}", 7), ("EPOCHS", "{}", 6),
           ("min", "{:.1f}", 5), ("MAX_RUN", "{}", 7), ("fits", "{}", 4),
           ("<= 10 min", "{}", 9)]


def print_row(row, header=False):
    if header:
        print("  ".join(f"{name:>{width}}" for name, _, width in COLUMNS))
    cells = ["-" if row[name] is None else fmt.format(row[name]) for name, fmt, _ in COLUMNS]
    print("  ".join(f"{cell:>{width}}" for cell, (_, _, width) in zip(cells, COLUMNS)),
          flush=True)


if __name__ == "__main__":
    main()
