"""Boxes from a bf16 backbone vs a float32 one, on the 92 disjoint coco-mini val images.

On a GPU ``python -m eval`` runs the backbone under bf16 autocast (``--precision auto``); the maps,
probabilities and boxes are computed in float32 from its features. This measures what that costs in
quality, with the same model and images: COCO AP / AP50 of the default recipe with fp32 and bf16
features (95% paired bootstrap intervals of the ratio), the largest relative difference of the raw
maps, and how many images get exactly the same boxes. Here bf16 runs through the CPU's autocast (the
same bf16 rounding of activations as a GPU's, other kernels).

``PYTHONPATH=. python bench/precision.py [--boot 200]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.recipes import REAL_ANN, REAL_IMAGES, REAL_WEIGHTS, metrics, with_interval
from camloc.evaluation import GroundTruth
from camloc.localize import Localizer
from camloc.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=200)
    args = parser.parse_args()
    if not REAL_WEIGHTS.is_file():
        raise SystemExit("../shared/data is missing")
    model, meta = load_model(REAL_WEIGHTS)
    truth = GroundTruth(REAL_ANN)
    images = sorted(truth.data["images"], key=lambda im: im["id"])
    per_precision, analyses = {}, {}
    for precision in ("fp32", "bf16"):
        localizer = Localizer(model, meta, device="cpu", precision=precision)
        found, kept = [], []
        for i in range(0, len(images), 8):
            chunk = images[i:i + 8]
            for im, analysis in zip(chunk, localizer.analyze([REAL_IMAGES / im["file_name"] for im in chunk])):
                found.append(localizer.detections(analysis, im["id"]))
                kept.append(analysis.raw_maps)
        per_precision[precision], analyses[precision] = found, kept
    rel = max(float((b - a).abs().max() / a.abs().max()) for a, b in zip(analyses["fp32"], analyses["bf16"]))
    same = sum([(d["category_id"], d["bbox"]) for d in a] == [(d["category_id"], d["bbox"]) for d in b]
               for a, b in zip(per_precision["fp32"], per_precision["bf16"]))
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, len(images), len(images)) for _ in range(args.boot)]
    points = {p: metrics(truth, found, images) for p, found in per_precision.items()}
    draws = {p: [metrics(truth, found, images, s) for s in samples] for p, found in per_precision.items()}
    print(f"### fp32 vs bf16 backbone: {len(images)} disjoint val images, MobileNetV2 COCO-80 @ 448, default recipe\n")
    print(f"max |maps_bf16 − maps_fp32| / max |maps_fp32| = {rel:.2e}; identical boxes on {same}/{len(images)} "
          "images\n")
    print("| backbone | AP | AP50 | AP bf16 / fp32 | AP50 bf16 / fp32 |\n| --- | --- | --- | --- | --- |")
    for precision in ("fp32", "bf16"):
        cells = [with_interval(points[precision][m], [d[m] for d in draws[precision]], 4) for m in ("AP", "AP50")]
        ratios = [with_interval(points[precision][m] / points["fp32"][m],
                                [b[m] / a[m] for a, b in zip(draws["fp32"], draws[precision]) if a[m] > 0], 3, "×")
                  for m in ("AP", "AP50")]
        print(f"| {precision} | {' | '.join(cells)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
