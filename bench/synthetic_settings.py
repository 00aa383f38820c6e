"""Which settings of the course recipe (``seed``) localise best? AP50/AP of the bundled demo model on a fresh
synthetic val set (``bench/recipes.py`` compares the recipes themselves).

Varies the threshold (Otsu or a fraction of the max), the box mode (all contours / largest),
the network input size and TTA, next to the full-image and centre-box baselines. The val set
(seed 1) is never seen in training (seed 0). Run with ``make bench`` or
``PYTHONPATH=. python bench/synthetic_settings.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import GroundTruth, coco_evaluate
from camloc.localize import Localizer
from camloc.models import load_model
from camloc.synthetic import generate

SETTINGS = [
    ("otsu", "all", None, False), ("0.2", "all", None, False), ("0.35", "all", None, False),
    ("0.5", "all", None, False), ("otsu", "largest", None, False), ("0.35", "largest", None, False),
    ("otsu", "all", 128, False), ("otsu", "all", 224, False), ("otsu", "all", 320, False),
    ("otsu", "all", None, True), ("0.35", "all", None, True),
]


def evaluate(localizer: Localizer, truth: GroundTruth, folder: Path, baseline: str | None = None) -> list[float]:
    dets = []
    images = truth.data["images"]
    for start in range(0, len(images), 16):
        chunk = images[start:start + 16]
        for info, analysis in zip(chunk, localizer.analyze([folder / im["file_name"] for im in chunk])):
            dets += (localizer.baseline_detections(analysis, baseline, info["id"]) if baseline
                     else localizer.detections(analysis, info["id"]))
    stats = coco_evaluate(truth, dets)["stats"]
    return [stats[1], stats[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    args = parser.parse_args()
    model, meta = load_model(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(tmp, 0, args.images, num_classes=len(meta["class_names"]), size=160, seed=1)
        truth = GroundTruth(data / "annotations" / "instances_val.json")
        print(f"{args.checkpoint.name} on {args.images} unseen synthetic scenes (input {meta['input_size']} px)")
        print("| threshold | boxes | input | TTA | AP50 | AP |\n| --- | --- | --- | --- | --- | --- |")
        for threshold, boxes, size, tta in SETTINGS:
            localizer = Localizer(model, meta, recipe="seed", threshold=threshold, boxes=boxes, img_size=size, tta=tta,
                                  device="cpu")
            ap50, ap = evaluate(localizer, truth, data / "val")
            print(f"| {threshold} | {boxes} | {size or meta['input_size']} | {'yes' if tta else 'no'} "
                  f"| {ap50:.3f} | {ap:.3f} |")
        for baseline in ("full", "center"):
            ap50, ap = evaluate(Localizer(model, meta, recipe="seed", device="cpu"), truth, data / "val", baseline)
            print(f"| {baseline}-image baseline | — | — | — | {ap50:.3f} | {ap:.3f} |")


if __name__ == "__main__":
    main()
