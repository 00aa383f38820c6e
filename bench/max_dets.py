"""What the 100-detections-per-image cap (``--max-dets``, the default) does to AP, side by side with every detection.

The default recipe's detections of each image, all of them and its 100 best scored
(:func:`camloc.pipeline.detections.best_per_image`), on the 92 disjoint coco-mini val images (the shared
MobileNetV2 COCO-80 at 448) and 300 synthetic scenes of seed 1 (≤ 8 objects, the demo model at 320): AP, AP50,
AP75, AR100 with 95 % intervals and the paired ratio capped / all (the same bootstrap resamples of the images).

``PYTHONPATH=. python bench/max_dets.py [--boot 200] [--sets real,synthetic]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.recipes import REAL_ANN, REAL_IMAGES, REAL_WEIGHTS, metrics, with_interval
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import GroundTruth
from camloc.localize import Localizer
from camloc.models import load_model
from camloc.pipeline.detections import MAX_DETECTIONS, best_per_image
from camloc.synthetic import generate

SHOWN = ("AP", "AP50", "AP75", "AR100")


def per_image_detections(localizer: Localizer, folder: Path, images: list[dict]) -> list[list[dict]]:
    found = []
    for i in range(0, len(images), 8):
        chunk = images[i:i + 8]
        for im, analysis in zip(chunk, localizer.analyze([folder / im["file_name"] for im in chunk])):
            found.append(localizer.detections(analysis, im["id"]))
    return found


def capped(found: list[dict], limit: int) -> list[dict]:
    """An image's detections, its ``limit`` best scored kept in their order."""
    keep = best_per_image(np.zeros(len(found), np.int64), np.array([d["score"] for d in found]), limit)
    return [d for d, k in zip(found, keep) if k]


def compare(title: str, localizer: Localizer, folder: Path, ann: Path, boot: int) -> None:
    truth = GroundTruth(ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])
    every = per_image_detections(localizer, folder, images)
    runs = {"every detection": every, f"best {MAX_DETECTIONS} per image": [capped(f, MAX_DETECTIONS) for f in every]}
    counts = [len(f) for f in every]
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, len(images), len(images)) for _ in range(boot)]
    points = {name: metrics(truth, found, images) for name, found in runs.items()}
    draws = {name: [metrics(truth, found, images, s) for s in samples] for name, found in runs.items()}
    print(f"\n### {title}: {len(images)} images, {localizer.recipe.name}; detections per image: median "
          f"{int(np.median(counts))}, max {max(counts)}, {sum(c > MAX_DETECTIONS for c in counts)} images over "
          f"{MAX_DETECTIONS}\n")
    print("| detections | " + " | ".join(SHOWN) + " | AP / every | AP50 / every |\n" + "| --- " * 7 + "|")
    base = "every detection"
    for name in runs:
        cells = [with_interval(points[name][m], [d[m] for d in draws[name]], 4) for m in SHOWN]
        ratios = [with_interval(points[name][m] / points[base][m],
                                [b[m] / a[m] for a, b in zip(draws[base], draws[name]) if a[m] > 0], 3, "×")
                  for m in ("AP", "AP50")]
        print(f"| {name} | {' | '.join(cells)} | {' | '.join(ratios)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--sets", default="real,synthetic")
    args = parser.parse_args()
    torch.manual_seed(0)
    sets = args.sets.split(",")
    if "real" in sets:
        if not REAL_WEIGHTS.is_file():
            print("real set skipped: ../shared/data is missing")
        else:
            model, meta = load_model(REAL_WEIGHTS)
            compare("Real: coco-mini val2017 ∖ train2017, MobileNetV2 COCO-80 @ 448",
                    Localizer(model, meta, device="cpu"), REAL_IMAGES, REAL_ANN, args.boot)
    if "synthetic" in sets:
        model, meta = load_model(DEMO_CHECKPOINT)
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(Path(tmp) / "val", 0, 300, num_classes=len(meta["class_names"]), size=160, seed=1,
                            max_objects=8)
            compare("Synthetic: 300 unseen scenes (seed 1, ≤ 8 objects), demo model @ 320",
                    Localizer(model, meta, device="cpu", img_size=320), data / "val",
                    data / "annotations" / "instances_val.json", args.boot)


if __name__ == "__main__":
    main()
