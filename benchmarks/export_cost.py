"""What the periodic model export (cifar.serving.PeriodicExport) costs next to training.

  .venv/bin/python benchmarks/export_cost.py [--data <cifar-10-python.tar.gz or converted folder>]
                                             [--md5 MD5] [--epochs 3] [--per-batch 2048]

On SageMaker the entry points export the SavedModel after epoch 1 and then whenever the last
export is at least 60 s and 20 x its own duration old, because a job stopped at max_run is killed
without a signal reaching the script. Each single-process entry point runs here in process mode
(Keras 2, this kernel) on real CIFAR-10 (--data; 40,000 training images) or on synthetic data of
the same layout; from the job's log: seconds per epoch, each export's seconds, and the share of
the run's training time spent exporting. The last line is RESULT {json}.
"""

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests"), str(ROOT / "code" / "phase0")]

from entry_points import make_data  # noqa: E402

from workshop import dataset, jobs  # noqa: E402

EXPORT = re.compile(r"exported the model of epoch (\d+) in ([\d.]+)s")
EPOCH = re.compile(r"epoch (\d+)/\d+ .* - time: ([\d.]+)s")


def prepare(data, md5, folder, per_batch):
    if data is None:
        return make_data(folder, per_batch)
    path = Path(data)
    if path.is_dir():
        return path
    target = folder / "cifar10"
    dataset.prepare_cifar10(url=str(path.resolve()), md5=md5, data_dir=target, num_shards=8,
                            progress=False)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="cifar-10-python.tar.gz (with --md5) or a converted folder")
    parser.add_argument("--md5", help="the archive's MD5 (required with an archive)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-batch", type=int, default=2048, help="synthetic data only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare(args.data, args.md5, Path(tmp), args.per_batch)
        records = dataset.read_manifest(data_dir / "train")["records"]
        for script in ("train_keras.py", "train_tf.py"):
            estimator = jobs.workshop_estimator("process", script, {"epochs": args.epochs},
                                                checkpoint=False)
            result = jobs.run_in_process(estimator, jobs.data_channels("process", data_dir),
                                         runs_dir=Path(tmp) / "runs", logs=False)
            log = result.logs_path.read_text()
            epochs = [float(s) for _, s in EPOCH.findall(log)]
            exports = [(int(e), float(s)) for e, s in EXPORT.findall(log)]
            rows.append({"entry_point": script, "epoch_seconds": epochs,
                         "exports": exports,
                         "export_share": round(sum(s for _, s in exports) / sum(epochs), 4)})
    print(f"train {records} records, {args.epochs} epochs, recipe defaults, process mode")
    print(f"{'entry point':16} {'s/epoch':>8} {'exports (epoch: s)':>28} {'share of training':>18}")
    for row in rows:
        mean = sum(row["epoch_seconds"]) / len(row["epoch_seconds"])
        done = ", ".join(f"{e}: {s:.1f}" for e, s in row["exports"])
        print(f"{row['entry_point']:16} {mean:8.1f} {done:>28} {row['export_share']:>17.1%}")
    print("RESULT " + json.dumps({"records": records, "epochs": args.epochs, "runs": rows}))


if __name__ == "__main__":
    main()
