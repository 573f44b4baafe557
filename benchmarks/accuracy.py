"""The recipe's accuracy on real CIFAR-10: train_keras.py with its defaults, in process mode.

  .venv/bin/python benchmarks/accuracy.py --data cifar-10-python.tar.gz --md5 <its MD5>
                                          [--epochs N] [--baseline [REV]] [--baseline-epochs M]
  .venv/bin/python benchmarks/accuracy.py --data data/cifar10      # a folder 1.0 converted

Converts an archive as notebook 1.0 does (40,000 train / 10,000 validation / 10,000 eval; the
MD5 is checked before the archive is opened), then runs train_keras.py in process mode (the
container's contract, as notebook 1.2 does) with every hyperparameter at its default except
``--epochs`` (default: the recipe's). Prints validation accuracy after each epoch, eval accuracy
at the end, training seconds per epoch (mean over the epochs after the first, which includes
tracing) and multiply-adds per image (convolutions and dense layers).
``--baseline`` also trains the recipe as it was at REV (default: the commit before this recipe,
``BASELINE_REV``), from ``git archive`` of its src/, in the same run and the same way, so the two
s/epoch figures are measured under the same conditions. Its defaults are its own.
Tune on validation; eval is for the final figure. The last line is ``RESULT {json}``.
"""

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "code" / "phase0")]

from workshop import SRC_DIR, dataset, jobs  # noqa: E402

BASELINE_REV = "ddbdee9"  # the last commit with the 20-epoch recipe (32/64/128 VGG blocks)

COUNT_MACS = """
import inspect, sys, numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[1])
from cifar import model as cnn
keras = tf.keras
parameters = inspect.signature(cnn.build_model).parameters
if "sample_images" in parameters:  # one pass: no test-time views (older revisions: flip_average)
    one_pass = [name for name in ("test_time_augmentation", "flip_average") if name in parameters]
    model = cnn.build_model(np.zeros((8, 32, 32, 3), np.uint8) + 128, **{one_pass[0]: False})
else:  # the baseline
    model = cnn.build_model()
total = 0
for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
        height, width, filters = layer.output.shape[1:]
        total += height * width * filters * int(tf.size(layer.kernel)) // filters
    elif isinstance(layer, keras.layers.Dense):
        total += int(tf.size(layer.kernel))
print(total)
"""


def multiply_adds(src_dir):
    """Multiply-adds per image of one forward pass of the model that ``src_dir``'s cifar.model
    builds (training's, one pass; evaluation may average several: test-time augmentation)."""
    out = subprocess.run([sys.executable, "-c", COUNT_MACS, str(src_dir)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


def data_folder(path, md5, work):
    """A converted folder as it is; an archive converted into ``work`` after its MD5 check."""
    path = Path(path)
    if path.is_dir():
        if not dataset.is_complete(path):
            raise SystemExit(f"{path} is not a complete converted CIFAR-10 folder (no valid "
                             f"manifest.json): pass the archive, or rerun notebook 1.0.")
        return path
    if not path.is_file():
        raise SystemExit(f"--data {path}: no such file or folder.")
    if not md5:
        raise SystemExit(f"--data {path} is an archive: give its MD5 with --md5 (it is checked "
                         f"before the archive is opened; `md5sum {path}` prints it).")
    target = work / "cifar10"
    dataset.prepare_cifar10(url=str(path.resolve()), md5=md5, data_dir=target, progress=False)
    return target


def baseline_src(rev, work):
    """src/ as it was at ``rev``, extracted from git into ``work``."""
    archive = work / "baseline-src.tar"
    try:
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev,
                        "code/phase0/src"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--baseline {rev}: git archive failed ({err.stderr.strip()}). It needs "
                         f"the repository's history: not a shallow clone.") from None
    with tarfile.open(archive) as tar:
        tar.extractall(work / "baseline", filter="data")
    return work / "baseline" / "code" / "phase0" / "src"


def train(src_dir, epochs, data_dir, runs):
    hyperparameters = {"epochs": epochs} if epochs else {}
    estimator = jobs.workshop_estimator("process", "train_keras.py", hyperparameters,
                                        checkpoint=False)
    estimator.source_dir = str(src_dir)
    result = jobs.run_in_process(estimator, jobs.data_channels("process", data_dir),
                                 runs_dir=runs, logs=False)
    if result.status != "Completed" or result.metrics.get("eval_accuracy") is None:
        raise SystemExit(f"{src_dir}: the job did not complete; see {result.logs_path}")
    metrics = result.metrics
    return {"eval_accuracy": metrics["eval_accuracy"], "epochs": metrics["epochs"],
            "macs_per_image": multiply_adds(src_dir),
            "seconds_per_epoch": metrics["epoch_seconds"],
            "validation": [row["val_accuracy"] for row in metrics["history"]],
            "wall_seconds": result.wall_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="cifar-10-python.tar.gz, or a folder notebook 1.0 converted")
    parser.add_argument("--md5", help="the archive's MD5 (required with an archive)")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--baseline", nargs="?", const=BASELINE_REV, metavar="REV",
                        help=f"also train src/ as it was at REV (default {BASELINE_REV})")
    parser.add_argument("--baseline-epochs", type=int, help="default: --epochs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = data_folder(args.data, args.md5, work)
        runs = {"recipe": train(SRC_DIR, args.epochs, data_dir, work / "runs")}
        if args.baseline:
            runs[f"baseline {args.baseline}"] = train(
                baseline_src(args.baseline, work), args.baseline_epochs or args.epochs,
                data_dir, work / "runs")
    print(f"data: {args.data}; validation accuracy after each epoch, eval accuracy at the end")
    names = list(runs)
    print(f"{'epoch':>7} " + " ".join(f"{name:>18}" for name in names))
    for epoch in range(max(len(run["validation"]) for run in runs.values())):
        cells = [f"{run['validation'][epoch]:18.4f}" if epoch < len(run["validation"])
                 else " " * 18 for run in runs.values()]
        print(f"{epoch + 1:7d} " + " ".join(cells))
    for label, key, form in (("eval", "eval_accuracy", "{:18.4f}"),
                             ("s/epoch", "seconds_per_epoch", "{:18.1f}"),
                             ("MACs", "macs_per_image", "{:18,d}"),
                             ("wall s", "wall_seconds", "{:18.0f}")):
        print(f"{label:>7} " + " ".join(form.format(run[key]) for run in runs.values()))
    recipe = runs["recipe"]
    result = {key: recipe[key] for key in ("eval_accuracy", "epochs", "macs_per_image",
                                           "seconds_per_epoch")}
    if args.baseline:
        base = runs[names[1]]
        result["baseline"] = {key: base[key] for key in result}
        result["seconds_per_epoch_ratio"] = round(
            recipe["seconds_per_epoch"] / base["seconds_per_epoch"], 3)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
