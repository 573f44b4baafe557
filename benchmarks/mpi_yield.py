"""Two Horovod ranks on this machine, with Open MPI's default waiting (spinning) and with
``mpi_yield_when_idle`` (a waiting rank yields its core), in one run.

  .venv/bin/python benchmarks/mpi_yield.py [--per-batch 256] [--epochs 4] [--repeats 2]

Makes a synthetic CIFAR-10 archive (tests/synthetic_cifar.py) and converts it as notebook 1.0
does, then runs ``train_tf_horovod.py`` under ``mpirun -np 2`` (batch 32) alternately without and
with process mode's ``-mca mpi_yield_when_idle 1``. Prints each run's wall time and CPU time
(user + system of mpirun and its ranks) and the ratios of the means, yield over default. Process
mode and the tests' two-rank launches pass the flag: every rank shares this machine's cores.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "code" / "phase0")]

from entry_points import make_data  # noqa: E402

from workshop import SRC_DIR  # noqa: E402
from workshop.process_mode.runner import YIELD_WHEN_IDLE  # noqa: E402


def run(data_dir, out, epochs, flags):
    """(wall seconds, CPU seconds) of one two-rank training."""
    argv = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", *flags,
            "-np", "2", sys.executable, str(SRC_DIR / "train_tf_horovod.py"),
            "--train", str(data_dir / "train"), "--validation", str(data_dir / "validation"),
            "--eval", str(data_dir / "eval"), "--sm-model-dir", str(out / "model"),
            "--output-data-dir", str(out / "output"), "--epochs", str(epochs),
            "--batch-size", "32"]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_data(Path(tmp), args.per_batch)
        runs = {"default": [], "yield": []}
        print(f"{'run':<10} {'wall s':>8} {'CPU s':>8}")
        for repeat in range(args.repeats):
            for name, flags in (("default", ()), ("yield", YIELD_WHEN_IDLE)):
                wall, cpu = run(data_dir, Path(tmp) / f"{name}{repeat}", args.epochs, flags)
                runs[name].append((wall, cpu))
                print(f"{name:<10} {wall:8.1f} {cpu:8.1f}", flush=True)

    def mean(name, i):
        return sum(r[i] for r in runs[name]) / len(runs[name])

    result = {"wall_ratio": round(mean("yield", 0) / mean("default", 0), 3),
              "cpu_ratio": round(mean("yield", 1) / mean("default", 1), 3),
              "default_wall_s": round(mean("default", 0), 1),
              "default_cpu_s": round(mean("default", 1), 1),
              "yield_wall_s": round(mean("yield", 0), 1), "yield_cpu_s": round(mean("yield", 1), 1),
              "epochs": args.epochs, "records_per_epoch": 4 * args.per_batch}
    print(f"yield / default: wall {result['wall_ratio']}, CPU {result['cpu_ratio']}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
