"""benchmarks/jpeg_quality.py names the JPEG setting that images last went through."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import jpeg_quality  # noqa: E402


@pytest.mark.parametrize("quality, subsampling", [(60, "4:4:4"), (75, "4:2:0"), (90, "4:2:0")])
def test_the_setting_images_went_through_changes_them_least(quality, subsampling):
    rng = np.random.default_rng(0)
    # Smooth colour gradients plus noise: a little like photographs, not like pure noise.
    ramp = np.linspace(0, 1, 32)
    ramps = (ramp[None, :, None, None] + ramp[None, None, :, None]) / 2
    base = 40 + 160 * rng.random((40, 1, 1, 3)) * ramps
    images = np.clip(base + rng.normal(0, 12, (40, 32, 32, 3)), 0, 255).astype(np.uint8)
    passed = jpeg_quality.jpeg_pass(images, quality, jpeg_quality.SUBSAMPLING[subsampling])
    changes = {(q, name): jpeg_quality.mean_change(passed, q, code)
               for name, code in jpeg_quality.SUBSAMPLING.items() for q in jpeg_quality.QUALITIES}
    assert min(changes, key=changes.get) == (quality, subsampling), changes
