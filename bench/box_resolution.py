"""The default recipe with its boxes at the image's resolution vs at a few times the feature grid.

``multilevel-flip`` traces its regions on maps upsampled to the photo (640×480: ~300k pixels per
map and level) or, with ``box_scale=s``, to ``s ×`` the feature grid (56×56 for a 14×14 grid at
``s = 4``) and scales the boxes — the form that runs as whole-batch tensor work on a GPU
(:mod:`camloc.boxes.grid`). This prints, for each scale, COCO AP / AP50 / AP75 / AR100 with 95%
bootstrap intervals, the paired ratio to the full-resolution boxes, and the box stage's
milliseconds per image on this machine, on:

* the *selection* sets (the rule below is applied here): coco-mini train2017 (369 real images) and
  300 synthetic scenes of seed 2;
* the *evaluation* sets (checked, never chosen on): the 92 coco-mini val2017 images not in train2017
  and 300 synthetic scenes of seed 1 (``bench/recipes.py``'s sets).

The rule, written before any figure was seen: the smallest ``s ∈ {2, 4, 8}`` whose paired AP and
AP50 ratio intervals contain 1.0 on both selection sets, kept only if its AP and AP50 lie inside the
full-resolution 95% intervals on both evaluation sets.

``PYTHONPATH=. python bench/box_resolution.py [--boot 200] [--sets selection,evaluation]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.recipes import REAL_ANN, REAL_IMAGES, REAL_WEIGHTS, SHARED, metrics, with_interval
from camloc.boxes import FULL_RESOLUTION
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import GroundTruth
from camloc.localize import Localizer
from camloc.models import load_model
from camloc.synthetic import generate

TRAIN_IMAGES = SHARED / "coco-mini" / "train2017"
TRAIN_ANN = SHARED / "coco-mini" / "annotations" / "instances_train2017_mini.json"
SCALES = (FULL_RESOLUTION, 2, 4, 8)
METRICS = ("AP", "AP50", "AP75", "AR100")


def compare(name: str, model, meta, folder: Path, ann: Path, img_size: int, boot: int) -> None:
    truth = GroundTruth(ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])
    localizer = Localizer(model, meta, recipe="multilevel-flip", img_size=img_size, device="cpu")
    analyses = []
    for i in range(0, len(images), 8):
        analyses += localizer.analyze([folder / im["file_name"] for im in images[i:i + 8]])
    n = len(images)
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, n, n) for _ in range(boot)]
    rows = {}
    for scale in SCALES:
        localizer = Localizer(model, meta, recipe="multilevel-flip", box_scale=scale, img_size=img_size, device="cpu")
        start = time.perf_counter()
        per_image = [localizer.detections(a, im["id"]) for a, im in zip(analyses, images)]
        seconds = time.perf_counter() - start
        point = metrics(truth, per_image, images)
        draws = [metrics(truth, per_image, images, s) for s in samples]
        rows[scale] = (point, draws, seconds)
    print(f"\n### {name}: {n} images, {boot} bootstrap resamples\n")
    print("| boxes at | AP | AP50 | AP75 | AR100 | AP / full | AP50 / full | box ms/img |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base_point, base_draws, _ = rows[FULL_RESOLUTION]
    for scale, (point, draws, seconds) in rows.items():
        cells = [with_interval(point[m], [d[m] for d in draws], 4) for m in METRICS]
        ratios = [with_interval(point[m] / base_point[m], [d[m] / b[m] for d, b in zip(draws, base_draws) if b[m] > 0],
                                2, "×") if base_point[m] > 0 else "—" for m in ("AP", "AP50")]
        label = "image resolution" if scale == FULL_RESOLUTION else f"{scale}× the grid"
        print(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} | {1000 * seconds / n:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--sets", default="selection,evaluation")
    args = parser.parse_args()
    torch.manual_seed(0)
    sets = args.sets.split(",")
    demo = load_model(DEMO_CHECKPOINT)
    for kind, (real_folder, real_ann, seed) in {"selection": (TRAIN_IMAGES, TRAIN_ANN, 2),
                                                 "evaluation": (REAL_IMAGES, REAL_ANN, 1)}.items():
        if kind not in sets:
            continue
        if REAL_WEIGHTS.is_file():
            compare(f"{kind}, real: {real_folder.name} ({real_ann.name})", *load_model(REAL_WEIGHTS), real_folder,
                    real_ann, 448, args.boot)
        else:
            print(f"real sets skipped: {SHARED} is missing")
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(tmp, 0, 300, num_classes=len(demo[1]["class_names"]), size=160, seed=seed, max_objects=8)
            compare(f"{kind}, synthetic: 300 scenes of seed {seed}", *demo, data / "val",
                    data / "annotations" / "instances_val.json", 320, args.boot)


if __name__ == "__main__":
    main()
