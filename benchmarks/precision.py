"""What training in bfloat16 saves on this CPU: the recipe's model, float32 against mixed_bfloat16.

  .venv/bin/python benchmarks/precision.py [--rounds 2] [--steps 10]

Each round trains ``cifar.model.build_model`` (the recipe's widths, optimizer and loss) on random
uint8 images at batch 512, once per precision, each in a fresh process, alternating: 3 steps to
trace, then ``--steps`` timed steps. Prints wall and CPU seconds per step (CPU time counts both
cores, so it moves less with the machine's other load than wall time) and the ratio
float32 / bfloat16 of each. ``cifar.model.choose_precision`` says which one a job here uses.
The last line is ``RESULT {json}``.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = ROOT / "code" / "phase0" / "src"

ONE_RUN = """
import json, sys, time
import numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[1])
from cifar import model as cnn
from cifar.sagemaker_args import RECIPE_DEFAULTS as recipe
precision, steps = sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (512 * 4, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 10, len(images))
model = cnn.build_model(images, precision=precision)
optimizer = cnn.build_optimizer(recipe["learning_rate"], 1000, 100, recipe["momentum"],
                                recipe["weight_decay"])
model.compile(optimizer=optimizer, loss=cnn.loss_fn(recipe["label_smoothing"]))
batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(512).cache().repeat()
model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)  # tracing
wall, cpu = time.perf_counter(), time.process_time()
model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
print(json.dumps({"wall": (time.perf_counter() - wall) / steps,
                  "cpu": (time.process_time() - cpu) / steps}))
"""


def one_run(precision, steps):
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(SRC_DIR), precision, str(steps)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC_DIR))
    from cifar import model as cnn

    precisions = ("float32", "mixed_bfloat16")
    rows = [{p: one_run(p, args.steps) for p in precisions} for _ in range(args.rounds)]
    print(f"batch 512, {args.steps} steps; this machine's choice (auto): "
          f"{cnn.choose_precision('auto')}")
    print(f"{'round':>5} {'f32 wall':>9} {'bf16 wall':>9} {'ratio':>6} "
          f"{'f32 cpu':>8} {'bf16 cpu':>8} {'ratio':>6}")
    for number, row in enumerate(rows, 1):
        f32, bf16 = row["float32"], row["mixed_bfloat16"]
        print(f"{number:5d} {f32['wall']:9.3f} {bf16['wall']:9.3f} "
              f"{f32['wall'] / bf16['wall']:6.2f} {f32['cpu']:8.3f} {bf16['cpu']:8.3f} "
              f"{f32['cpu'] / bf16['cpu']:6.2f}")
    print("RESULT " + json.dumps({
        "auto": cnn.choose_precision("auto"),
        "cpu_ratio": [round(r["float32"]["cpu"] / r["mixed_bfloat16"]["cpu"], 2) for r in rows],
        "wall_ratio": [round(r["float32"]["wall"] / r["mixed_bfloat16"]["wall"], 2)
                       for r in rows]}))


if __name__ == "__main__":
    main()
