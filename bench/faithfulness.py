"""Faithfulness of every map method on real COCO images (``camloc.evaluation.Faithfulness``), side by side.

The maps of every (image, class present) pair of the first ``--images`` of the 92 coco-mini val2017
images not in train2017, the shared MobileNetV2 COCO-80 at ``--size`` px: Average Drop and Increase in
Confidence (%), insertion and deletion AUC (``--steps`` steps), with 95 % intervals from resampling the
pairs, and the seconds the measurement took (the maps' own time excluded).

``PYTHONPATH=. python bench/faithfulness.py [--images 24] [--size 224] [--steps 16]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from camloc.cam import make_method
from camloc.evaluation import Faithfulness, GroundTruth
from camloc.io.images import load_image
from camloc.localize import Localizer
from camloc.models import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO = SHARED / "coco-mini"
METHODS = [("cam", {}), ("gradcampp", {}), ("layercam", {}), ("layercam", {"layer": "features.13"}),
           ("hirescam", {"layer": "features.13"}), ("layercam-fused", {}), ("eigencam", {}),
           ("scorecam", {"max_channels": 32})]


def interval(values: list[float], rng: np.random.Generator, boot: int = 1000) -> str:
    values_a = np.asarray(values)
    means = [values_a[rng.integers(0, len(values_a), len(values_a))].mean() for _ in range(boot)]
    return f"{values_a.mean():.3f} [{np.percentile(means, 2.5):.3f}, {np.percentile(means, 97.5):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, meta = load_model(SHARED / "weights" / "mobilenet_v2_coco80_linear.pth")
    truth = GroundTruth(COCO / "annotations" / "instances_val2017_mini_disjoint.json")
    index = {cid: k for k, cid in enumerate(truth.category_ids.tolist())}
    present: dict[int, set[int]] = {}
    for a in truth.data["annotations"]:
        if not a.get("iscrowd", 0):
            present.setdefault(a["image_id"], set()).add(index[a["category_id"]])
    images = sorted(truth.data["images"], key=lambda im: im["id"])[: args.images]
    pil = [load_image(COCO / "val2017" / im["file_name"]) for im in images]
    classes = [sorted(present.get(im["id"], ())) for im in images]
    print(f"{sum(map(len, classes))} (image, present class) maps of {len(images)} unseen val2017 images, "
          f"{args.size} px, {args.steps} steps; 95% intervals over the maps\n")
    print("| method | Average Drop % ↓ | Increase in Confidence % ↑ | insertion AUC ↑ | deletion AUC ↓ | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, options in METHODS:
        localizer = Localizer(model, meta, method=make_method(name, **options), img_size=args.size,
                              recipe="multilevel", device="cpu")
        faith = Faithfulness(steps=args.steps)
        seconds = 0.0
        for start in range(0, len(pil), 8):
            batch, own = pil[start:start + 8], classes[start:start + 8]
            analyses = localizer.analyze(batch, own)
            began = time.perf_counter()
            faith.add_analyses(localizer, batch, analyses, own)
            seconds += time.perf_counter() - began
        rng = np.random.default_rng(0)
        cells = [interval([100 * v for v in faith.values["drop"]], rng),
                 interval([100 * v for v in faith.values["increase"]], rng),
                 interval(faith.values["insertion"], rng), interval(faith.values["deletion"], rng)]
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        print(f"| {label} | {' | '.join(cells)} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
