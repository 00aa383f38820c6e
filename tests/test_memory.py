"""Memory for huge images: one image at the pixel limit runs within the stated working-memory budget on the CPU.

Measured, not estimated: a subprocess loads the model, warms up, resets its peak resident set
(``/proc/self/clear_refs``), then runs ``Localizer.predict`` on a 64-megapixel JPEG (8000 × 8000, the
:data:`~camloc.io.images.MAX_IMAGE_PIXELS` limit) with the default recipe (full resolution) and with ``seed``
(the course recipe); its peak resident set over the warmed-up baseline (``VmHWM − VmRSS``) is the image's working
memory: decoding, preprocessing, the forward passes of every view and the box stage of every gated class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from camloc.boxes import DEFAULT_RECIPE
from camloc.demo import DEMO_CHECKPOINT
from camloc.io.images import IMAGE_WORKING_MEMORY, MAX_IMAGE_PIXELS
from tests.conftest import ROOT

MEASURE = """
import json, re, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from camloc.localize import Localizer

def status(key):
    return int(re.search(rf"{key}:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

path, checkpoint, recipes = sys.argv[1], sys.argv[2], sys.argv[3:]
found = {}
for recipe in recipes:
    localizer = Localizer.from_checkpoint(checkpoint, recipe=recipe, device="cpu")
    localizer.predict(np.zeros((64, 64, 3), np.uint8))  # warm up: every code path's buffers and caches
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current resident set
    base = status("VmRSS")
    start = time.perf_counter()
    detections = localizer.predict(path)
    found[recipe] = {"working": status("VmHWM") - base, "detections": len(detections),
                     "seconds": time.perf_counter() - start}
print(json.dumps(found))
"""


def megapixel_jpeg(path: Path, side: int) -> Path:
    """A ``side × side`` photo-like JPEG: smooth blobs of colour (a noise image upsampled), so that maps have
    structure and the decoder does real work."""
    small = np.random.default_rng(0).integers(0, 255, (side // 50, side // 50, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    return path


@pytest.mark.slow
def test_an_image_at_the_pixel_limit_runs_within_the_working_memory_budget(tmp_path):
    """The default recipe used to take over 6 GB for 64 MP (its box stage: four full-resolution maps at once, each
    with nine level masks and a float64 summed-area table); a 24 MP photo 3.35 GB."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    side = int(MAX_IMAGE_PIXELS**0.5)
    image = megapixel_jpeg(tmp_path / "huge.jpg", side)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(image), str(DEMO_CHECKPOINT), DEFAULT_RECIPE, "seed"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nworking memory of one {side}×{side} image: " + ", ".join(
        f"{recipe} {m['working'] / 2**20:.0f} MiB ({m['detections']} detections, {m['seconds']:.0f} s)"
        for recipe, m in found.items()))
    for recipe, measured in found.items():
        assert measured["detections"] >= 1, recipe
        assert measured["working"] <= IMAGE_WORKING_MEMORY, (recipe, measured["working"] / 2**20)
