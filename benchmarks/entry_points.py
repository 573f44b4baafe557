"""Every entry point on the same small data: 1 process vs 2, and Keras 2 vs Keras 3, in one run.

  .venv/bin/python benchmarks/entry_points.py [--per-batch 1024] [--epochs 3] [--batch-size 64]
                                              [--local]

Makes a synthetic CIFAR-10 archive (tests/synthetic_cifar.py; ``--per-batch`` images in each of
its six batches), converts it as notebook 1.0 does, then runs each entry point in process mode
(the container contract; 2 simulated hosts for the distributed ones) and the single-process ones
also standalone on TF 2.21 / Keras 3 (.venv-keras3). Prints wall time, images/s (mean over epochs
after the first), seconds per epoch and eval accuracy, and a throughput ratio: a distributed
script's to its single-process sibling's, a Keras 3 run's to the same script's Keras 2 run.
--local also runs every entry point through the SDK's local mode in the stand-in image its
notebook names (Docker; `make local-images`), same instance count: wall time there includes
starting the containers; the ratio is local mode's images/s to process mode's.
On a 2-core machine two processes cannot be faster than one: the ratio shows what
synchronisation costs here, not what a second machine would give.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "code" / "phase0")]

import synthetic_cifar  # noqa: E402

from workshop import SRC_DIR, dataset, jobs  # noqa: E402
from workshop.entry_points import ENTRY_POINTS  # noqa: E402

KERAS3_PYTHON = ROOT / ".venv-keras3" / "bin" / "python"
# Every entry point of the registry; the distributed ones on 2 simulated hosts, 1 process each.
RUNS = [(entry.script, 2 if entry.distributed else 1, entry.sibling) for entry in ENTRY_POINTS]


def make_data(folder, per_batch):
    archive = folder / "cifar-10-python.tar.gz"
    md5 = synthetic_cifar.make_archive(archive, per_batch=per_batch)["md5"]
    data_dir = folder / "cifar10"
    dataset.prepare_cifar10(url=str(archive), md5=md5, data_dir=data_dir, num_shards=4,
                            progress=False)
    return data_dir


def process_mode(entry_point, count, data_dir, runs, hyperparameters):
    estimator = jobs.workshop_estimator("process", entry_point, hyperparameters,
                                        instance_count=count, processes_per_host=1,
                                        checkpoint=False)
    result = jobs.run_in_process(estimator, jobs.data_channels("process", data_dir), runs_dir=runs,
                                 logs=False)
    return result.metrics, result.wall_seconds


TELEMETRY_OPT_OUT = ("SchemaVersion: '1.0'\n"
                     "SageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")


def sdk_telemetry_off(folder):
    """The SDK sends telemetry from every fit(), local mode too: opt out (as the tests do)."""
    config = folder / "sagemaker-config.yaml"
    config.write_text(TELEMETRY_OPT_OUT)
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def local_mode(entry_point, count, data_dir, runs, hyperparameters):
    estimator = jobs.workshop_estimator("local", entry_point, hyperparameters,
                                        instance_count=count, checkpoint=False)
    start = time.monotonic()
    estimator.fit(jobs.data_channels("local", data_dir), logs=False)
    wall = time.monotonic() - start
    return jobs.result_of(estimator, runs_dir=runs).metrics, wall


def keras3_standalone(entry_point, data_dir, out, hyperparameters):
    flags = [f"--{k}={v}" for k, v in hyperparameters.items()]
    command = [str(KERAS3_PYTHON), str(SRC_DIR / entry_point), *flags,
               "--train", str(data_dir / "train"), "--validation", str(data_dir / "validation"),
               "--eval", str(data_dir / "eval"), "--sm-model-dir", str(out / "model"),
               "--output-data-dir", str(out / "output")]
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.monotonic() - start
    return json.loads((out / "output" / "metrics.json").read_text()), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-batch", type=int, default=1024, help="train = 4 x this")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--local", action="store_true", help="also in SDK local mode (Docker)")
    args = parser.parse_args()
    hyperparameters = {"epochs": args.epochs, "batch-size": args.batch_size,
                       "learning-rate": args.learning_rate}
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = make_data(tmp, args.per_batch)
        for entry_point, count, sibling in RUNS:
            metrics, wall = process_mode(entry_point, count, data_dir, tmp / "runs",
                                         hyperparameters)
            rates[entry_point] = metrics["images_per_sec"]
            ratio = f"{metrics['images_per_sec'] / rates[sibling]:.2f}x" if sibling else ""
            rows.append((entry_point, f"{count} proc, Keras {metrics['keras'][:4]}", wall,
                         metrics, ratio))
        if args.local:
            sdk_telemetry_off(tmp)
            for entry_point, count, _ in RUNS:
                metrics, wall = local_mode(entry_point, count, data_dir, tmp / "runs",
                                           hyperparameters)
                rows.append((entry_point, f"local {count} inst, Keras {metrics['keras'][:4]}",
                             wall, metrics,
                             f"{metrics['images_per_sec'] / rates[entry_point]:.2f}x"))
        if KERAS3_PYTHON.exists():
            for entry_point in ("train_keras.py", "train_tf.py"):
                metrics, wall = keras3_standalone(entry_point, data_dir, tmp / entry_point,
                                                  hyperparameters)
                rows.append((entry_point, f"1 proc, Keras {metrics['keras'][:4]}", wall, metrics,
                             f"{metrics['images_per_sec'] / rates[entry_point]:.2f}x"))
    print(f"train {4 * args.per_batch} / validation {args.per_batch} / eval {args.per_batch} "
          f"records, {args.epochs} epochs, batch {args.batch_size} per process")
    print(f"{'entry point':24} {'run':26} {'wall s':>7} {'images/s':>9} {'s/epoch':>8} "
          f"{'eval acc':>9} {'ratio':>7}")
    for entry_point, run, wall, metrics, ratio in rows:
        print(f"{entry_point:24} {run:26} {wall:7.1f} {metrics['images_per_sec']:9.0f} "
              f"{metrics['epoch_seconds']:8.2f} {metrics['eval_accuracy']:9.3f} {ratio:>7}")


if __name__ == "__main__":
    main()
