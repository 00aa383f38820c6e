"""Flip consistency of every map method, with the maps laid on the image by the stretched grid (``align none``)
and by each model's measured geometry (``align measured``): real COCO images (shared MobileNetV2 COCO-80 at 448)
and synthetic scenes (the demo model at 320).

For each image, the map of its most probable class and the map of the same class in the mirrored image, flipped
back, each laid on the image through its own frame (:func:`camloc.evaluation.flip_consistency`): the horizontal
shift between them in cells (0: both lie where the network looked) and their correlation as laid. Prints, per
set, method and alignment, the median shift, the median and 90th percentile of its size, and the median
correlation.

``PYTHONPATH=. python bench/flip_consistency.py [--real 24] [--synthetic 60] [--methods cam,layercam]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.recipes import METHOD_SPECS, REAL_ANN, REAL_IMAGES, REAL_WEIGHTS
from camloc.cam import make_method
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import GroundTruth, flip_consistency
from camloc.localize import Localizer
from camloc.models import load_model
from camloc.synthetic import generate

PLAIN, MIRRORED = (1.0, False), (1.0, True)


def top_classes(model, meta, files: list[Path], img_size: int) -> list[int]:
    """Each image's most probable class (CAM's forward pass)."""
    localizer = Localizer(model, meta, img_size=img_size, device="cpu")
    return [int(a.probs.argmax()) for a in localizer.analyze(files, views=[PLAIN])]


def shifts(model, meta, files: list[Path], classes: list[int], method: str, align: str, img_size: int,
           batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the flip-consistency shift (cells) and correlation of ``method``'s map of its class."""
    name, options = METHOD_SPECS[method]
    localizer = Localizer(model, meta, method=make_method(name, **options), recipe="multilevel", align=align,
                          img_size=img_size, device="cpu")
    shift, correlation = [], []
    for start in range(0, len(files), batch):
        chunk, wanted = files[start:start + batch], [[k] for k in classes[start:start + batch]]
        plain = localizer.analyze(chunk, wanted, views=[PLAIN])
        mirrored = localizer.analyze(chunk, wanted, views=[MIRRORED])
        for a, b in zip(plain, mirrored):
            found = flip_consistency(a.raw_maps, b.raw_maps, a.frame, b.frame)
            shift.append(found.shift[0])
            correlation.append(found.correlation[0])
    return np.array(shift), np.array(correlation)


def report(title: str, model, meta, files: list[Path], img_size: int, methods: list[str]) -> None:
    classes = top_classes(model, meta, files, img_size)
    print(f"\n### {title}: {len(files)} images, each image's most probable class\n")
    print("| method | align | median shift (cells) | median \\|shift\\| | 90th pct \\|shift\\| | median correlation "
          "| s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in methods:
        for align in ("none", "measured"):
            start = time.perf_counter()
            shift, correlation = shifts(model, meta, files, classes, method, align, img_size)
            print(f"| {method} | {align} | {np.median(shift):+.2f} | {np.median(np.abs(shift)):.2f} "
                  f"| {np.percentile(np.abs(shift), 90):.2f} | {np.median(correlation):.3f} "
                  f"| {time.perf_counter() - start:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=24, help="coco-mini val images (disjoint from train), 0: none")
    parser.add_argument("--synthetic", type=int, default=60, help="synthetic scenes (seed 1), 0: none")
    parser.add_argument("--methods", default="cam,gradcampp,layercam,layercam@16,hirescam@16,layercam-fused,eigencam",
                        help=f"of {', '.join(METHOD_SPECS)}")
    args = parser.parse_args()
    torch.manual_seed(0)
    methods = args.methods.split(",")
    if args.real and REAL_WEIGHTS.is_file():
        model, meta = load_model(REAL_WEIGHTS)
        images = sorted(GroundTruth(REAL_ANN).data["images"], key=lambda im: im["id"])[:args.real]
        report("Real: coco-mini val2017 ∖ train2017, shared MobileNetV2 COCO-80 @ 448", model, meta,
               [REAL_IMAGES / im["file_name"] for im in images], 448, methods)
    if args.synthetic:
        model, meta = load_model(DEMO_CHECKPOINT)
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(Path(tmp), 0, args.synthetic, num_classes=len(meta["class_names"]), size=160, seed=1,
                            max_objects=8)
            report("Synthetic: unseen scenes (seed 1, ≤ 8 objects), demo model @ 320", model, meta,
                   sorted((data / "val").glob("*.jpg")), 320, methods)


if __name__ == "__main__":
    main()
