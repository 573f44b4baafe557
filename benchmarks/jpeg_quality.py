"""Which JPEG setting a CIFAR-10 copy's images went through, if any.

  .venv/bin/python benchmarks/jpeg_quality.py --data cifar-10-python.tar.gz --md5 <its MD5>
  .venv/bin/python benchmarks/jpeg_quality.py --data data/cifar10      # a folder 1.0 converted

Re-encodes the first ``--images`` eval images at each quality and chroma subsampling with Pillow
and prints how much a pixel changes on average (0-255 levels). Encoding an image again with the
settings it was last encoded with changes it least (JPEG at the same settings is close to
idempotent), so a sharp minimum names the setting. Why it matters: accuracies published on the
official pixels, which were stored raw, are no yardstick for a copy that lost detail to JPEG
(README, "Accuracy on real CIFAR-10"). The last line is ``RESULT {json}``.
"""

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402

from workshop import dataset  # noqa: E402  (accuracy puts code/phase0 on the path)

QUALITIES = (50, 60, 70, 75, 80, 85, 90, 95)
SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}  # Pillow's codes for the two common settings


def jpeg_pass(images, quality, subsampling):
    """``images`` (uint8 [n, 32, 32, 3]) JPEG-encoded with Pillow and decoded again."""
    passed = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
        passed.append(np.asarray(Image.open(buffer)))
    return np.stack(passed)


def mean_change(images, quality, subsampling):
    """Mean absolute change per pixel value when ``images`` are JPEG-encoded and decoded."""
    passed = jpeg_pass(images, quality, subsampling)
    return float(np.abs(passed.astype(np.float64) - images).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="cifar-10-python.tar.gz, or a folder notebook 1.0 converted")
    parser.add_argument("--md5", help="the archive's MD5 (required with an archive)")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = accuracy.data_folder(args.data, args.md5, Path(tmp))
        images, _ = dataset.read_examples(data_dir, "eval", count=args.images)
    table = {name: {q: round(mean_change(images, q, code), 2) for q in QUALITIES}
             for name, code in SUBSAMPLING.items()}
    print(f"mean change of a pixel value (0-255) when {len(images)} eval images are re-encoded")
    print(f"{'quality':>8} " + " ".join(f"{name:>7}" for name in table))
    for quality in QUALITIES:
        print(f"{quality:8d} " + " ".join(f"{table[name][quality]:7.2f}" for name in table))
    name, quality = min(((n, q) for n in table for q in QUALITIES), key=lambda k: table[k[0]][k[1]])
    print("RESULT " + json.dumps({"least_change": {"quality": quality, "subsampling": name,
                                                   "mean_change": table[name][quality]},
                                  "images": len(images), "table": table}))


if __name__ == "__main__":
    main()
