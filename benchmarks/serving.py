"""Serving cost: the TF Serving stand-in behind the SDK's predictor vs the signature in-process.

  .venv/bin/python benchmarks/serving.py [--requests 200] [--seconds 5]

Saves the workshop's CNN (untrained: same compute as a trained one) as training does, deploys it
with deploy.serve_in_process (the stand-in on loopback, gunicorn + falcon + TensorFlow) and, in the
same run, times predictor.predict(batch) — JSON serialisation, HTTP, the container's request
rewriting, TF Serving's JSON reply, deserialisation — against calling the serving signature
in-process on the same images. Then finds the batch size with the most images/s whose JSON stays
under InvokeEndpoint's 6 MB limit. Latencies are per request, on whatever else the machine runs.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "code" / "phase0"), str(ROOT / "code" / "phase0" / "src")]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cifar.model import build_model  # noqa: E402
from cifar.serving import save_for_serving  # noqa: E402
from workshop import jobs  # noqa: E402
from workshop.files import pack_folder  # noqa: E402
from workshop.serving import deploy  # noqa: E402


def timed(call, batches):
    """Per-call seconds over the batches (after one warm-up call)."""
    call(batches[0])
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        call(batch)
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def row(label, batch_size, seconds):
    ms = seconds * 1000
    return (f"{label:<22} {batch_size:>6} {1 / seconds.mean():>10.1f} "
            f"{batch_size / seconds.mean():>10.0f} {np.percentile(ms, 50):>9.2f} "
            f"{np.percentile(ms, 99):>9.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests at batch size 1")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="about how long each larger batch size is timed")
    args = parser.parse_args()
    from sagemaker.tensorflow import TensorFlowModel

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    # Untrained: serving's speed does not depend on the weights; random images fit the whitening.
    sample = np.random.default_rng(1).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    save_for_serving(build_model(sample), str(work / "model"))
    artifact = pack_folder(work / "model", work / "model.tar.gz")
    signature = tf.saved_model.load(str(work / "model" / "1")).signatures["serving_default"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)

    model = TensorFlowModel(model_data=f"file://{artifact}", framework_version="2.19",
                            role=jobs.OFFLINE_ROLE, sagemaker_session=jobs.session_for("process"))
    predictor = deploy.serve_in_process(model, runs_dir=work / "runs")
    try:
        def in_process(batch):
            return signature(image=tf.constant(batch))["class_id"].numpy()

        header = (f"{'path':<22} {'batch':>6} {'requests/s':>10} {'images/s':>10} "
                  f"{'p50 ms':>9} {'p99 ms':>9}")
        print(f"\nCPU: {os.cpu_count()} cores; TF {tf.__version__}; one stand-in worker\n")
        print(header)
        print("-" * len(header))
        ratios = {}
        for batch_size, count in ((1, args.requests), (100, max(args.requests // 10, 10))):
            batches = [images[i % 20 * batch_size % len(images):][:batch_size]
                       for i in range(count)]
            served = timed(predictor.predict, batches)
            direct = timed(in_process, batches)
            print(row("stand-in via predictor", batch_size, served))
            print(row("signature in-process", batch_size, direct))
            ratios[batch_size] = np.percentile(served, 50) / np.percentile(direct, 50)
        print("\np50 latency, served / in-process (the cost of HTTP + JSON): "
              + ", ".join(f"batch {b}: {r:.1f}x" for b, r in ratios.items()))

        limit = deploy.PAYLOAD_LIMIT_BYTES
        per_image = len(predictor.serializer.serialize(images[:100])) / 100
        largest = next(n for n in range(int(limit / per_image) + 50, 0, -1)
                       if len(predictor.serializer.serialize(images[:n])) <= limit)
        print(f"\nJSON request size: {per_image / 1000:.1f} kB per image; largest batch under "
              f"{limit / 1e6:.0f} MB: {largest} images\n")
        print(f"{'batch':>6} {'MB':>6} {'images/s':>10} {'p50 ms':>9}")
        best = (0, 0.0)
        for batch_size in sorted({10, 50, 100, 200, 300, largest // 2, largest}):
            size = len(predictor.serializer.serialize(images[:batch_size]))
            one = timed(predictor.predict, [images[:batch_size]])[0]
            count = max(3, min(50, int(args.seconds / max(one, 1e-3))))
            seconds = timed(predictor.predict, [images[:batch_size]] * count)
            rate = batch_size / seconds.mean()
            best = max(best, (rate, batch_size))
            print(f"{batch_size:>6} {size / 1e6:>6.2f} {rate:>10.0f} "
                  f"{np.percentile(seconds, 50) * 1000:>9.1f}")
        print(f"\nmost images/s under the limit: batch {best[1]} ({best[0]:.0f} images/s)")
    finally:
        deploy.shut_down("process", predictor)


if __name__ == "__main__":
    main()
