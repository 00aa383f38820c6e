"""Every box recipe, side by side, on real COCO images and on synthetic scenes, with 95% bootstrap CIs.

Sets (quality figures never come from the images the recipes were tuned on):

* **real**: the 92 images of ``coco-mini/val2017`` that are not in train2017
  (``instances_val2017_mini_disjoint.json``), the shared MobileNetV2 COCO-80 weights at 448 px;
* **synthetic**: 300 unseen scenes of ``camloc.synthetic`` (seed 1, up to 8 objects: several
  instances per class), the bundled demo model at 320 px (a 10×10 map grid).

The recipes' parameters were chosen on other images: coco-mini train2017 (369 images) and
synthetic seed 2. Each row: COCO AP, AP50, AP75, AR100, VOC mAP@0.5, wsolevaluation's
MaxBoxAccV2 of the maps (it scores the maps, so it is the same for every recipe on the same
maps), the box stage's milliseconds per image and end-to-end images/s (the forward passes its
maps need — one view, the image and its mirror, or six TTA views — plus that recipe's box
stage). The 95% intervals come from resampling the images with replacement (``--boot`` times);
ratios to ``seed`` are paired (same resampled images).

``PYTHONPATH=. python bench/recipes.py [--boot 200] [--sets real,synthetic]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import BoxAccuracy, GroundTruth, coco_evaluate, image_hits, recognised_classes, voc_map
from camloc.localize import Analysis, Localizer
from camloc.models import load_model
from camloc.recipes import DEFAULT_RECIPE
from camloc.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REAL_IMAGES = SHARED / "coco-mini" / "val2017"
REAL_ANN = SHARED / "coco-mini" / "annotations" / "instances_val2017_mini_disjoint.json"
REAL_WEIGHTS = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
METRICS = ("AP", "AP50", "AP75", "AR100", "VOC")

#: (row label, recipe name or "full" for the full-image baseline, recipe options, maps: plain | flip | tta)
ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("seed (the course recipe)", "seed", {}, "plain"),
    ("seed on flip maps (map refinement alone)", "seed", {"flip": True}, "flip"),
    ("evidence (seed boxes, evidence score)", "evidence", {}, "plain"),
    ("multilevel (proposals + evidence + NMS)", "multilevel", {}, "plain"),
    ("instances (multilevel cut at saddles)", "instances", {}, "plain"),
    ("**multilevel-flip** (default)", "multilevel-flip", {}, "flip"),
    ("multilevel on 6-view TTA maps", "multilevel", {}, "tta"),
    ("full-image box baseline", "full", {}, "plain"),
]
#: Which of the six TTA views (in ``Localizer.views()`` order) each kind of maps averages.
MAPS = {"plain": [(1.0, False)], "flip": [(1.0, False), (1.0, True)], "tta": None}


@dataclass
class Prepared:
    """One set's ground truth, images and forward passes: analyses and forward seconds per kind of maps."""

    truth: GroundTruth
    images: list[dict]
    analyses: dict[str, list[Analysis]]
    forward_s: dict[str, float]


def prepare(model, meta, folder: Path, ann: Path, img_size: int) -> Prepared:
    """Every TTA view of every image, once; each kind of maps averages its views (as the Localizer does)."""
    truth = GroundTruth(ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])
    localizer = Localizer(model, meta, img_size=img_size, tta=True, device="cpu")
    all_views = localizer.views()
    per_view, seconds = {}, {}
    for view in all_views:
        start, found = time.perf_counter(), []
        for i in range(0, len(images), 8):
            found += localizer.analyze([folder / im["file_name"] for im in images[i:i + 8]], views=[view])
        per_view[view], seconds[view] = found, time.perf_counter() - start
    analyses, forward_s = {}, {}
    for kind, views in MAPS.items():
        views = views or all_views
        analyses[kind] = [Analysis.average(group) if len(views) > 1 else group[0]
                          for group in zip(*(per_view[v] for v in views))]
        forward_s[kind] = sum(seconds[v] for v in views)
    return Prepared(truth, images, analyses, forward_s)


def detections(localizer: Localizer, kind: str, analyses: list[Analysis], images: list[dict]) -> list[list[dict]]:
    if kind == "full":
        return [localizer.baseline_detections(a, "full", im["id"]) for a, im in zip(analyses, images)]
    return [localizer.detections(a, im["id"]) for a, im in zip(analyses, images)]


def metrics(truth: GroundTruth, per_image: list[list[dict]], images: list[dict], sample: np.ndarray | None = None
            ) -> dict[str, float]:
    """COCO AP/AP50/AP75/AR100 and VOC mAP of the images ``sample`` (positions; repeats allowed: each
    draw is a new image)."""
    sample = np.arange(len(images)) if sample is None else sample
    anns_of: dict[int, list[dict]] = {}
    for a in truth.data["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    gt = {"images": [], "annotations": [], "categories": truth.data["categories"]}
    dets = []
    for new_id, pos in enumerate(sample.tolist(), start=1):
        old = images[pos]
        gt["images"].append({**old, "id": new_id})
        gt["annotations"] += [{**a, "id": len(gt["annotations"]) + j + 1, "image_id": new_id}
                              for j, a in enumerate(anns_of.get(old["id"], []))]
        dets += [{**d, "image_id": new_id} for d in per_image[pos]]
    truth_s = GroundTruth(gt)
    stats = coco_evaluate(truth_s, dets)["stats"]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "AR100": stats[8],
            "VOC": voc_map(truth_s, dets)["map"] or 0.0}


def map_hits(prepared: Prepared, kind: str) -> list[tuple[np.ndarray, list[bool]]]:
    """wsolevaluation hits and recognition flags of every (image, present class) map, per image."""
    truth = prepared.truth
    cat_index = {cid: k for k, cid in enumerate(truth.category_ids.tolist())}
    boxes: dict[int, dict[int, list]] = {}
    for a in truth.data["annotations"]:
        if not a.get("iscrowd", 0):
            boxes.setdefault(a["image_id"], {}).setdefault(cat_index[a["category_id"]], []).append(a["bbox"])
    out = []
    for im, analysis in zip(prepared.images, prepared.analyses[kind]):
        present = sorted(boxes.get(im["id"], {}))
        hits = image_hits(analysis.raw_maps[analysis.rows(present)], [np.array(boxes[im["id"]][k]) for k in present],
                          analysis.size)
        out.append((hits, recognised_classes(analysis.probs, present)))
    return out


def max_box_acc(per_image: list[tuple[np.ndarray, list[bool]]], sample: np.ndarray) -> float:
    accuracy = BoxAccuracy()
    for pos in sample.tolist():
        accuracy.add(*per_image[pos])
    return accuracy.result()["MaxBoxAccV2"] or 0.0


def with_interval(point: float, draws: list[float], digits: int, unit: str = "") -> str:
    """``point`` and the central 95% of its bootstrap ``draws`` (the point alone without draws: ``--boot 0``)."""
    text = f"{point:.{digits}f}{unit}"
    if not draws:
        return text
    low, high = np.percentile(draws, 2.5), np.percentile(draws, 97.5)
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def bench_set(name: str, model, meta, prepared: Prepared, img_size: int, boot: int, seed: int = 0) -> None:
    n = len(prepared.images)
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, n, n) for _ in range(boot)]
    results = {}
    for label, kind, options, maps in ROWS:
        localizer = Localizer(model, meta, recipe="seed" if kind == "full" else kind, img_size=img_size,
                              device="cpu", **options)
        start = time.perf_counter()
        per_image = detections(localizer, kind, prepared.analyses[maps], prepared.images)
        box_s = time.perf_counter() - start
        point = metrics(prepared.truth, per_image, prepared.images)
        draws = [metrics(prepared.truth, per_image, prepared.images, s) for s in samples]
        results[label] = (point, draws, box_s, maps)
    hits = {maps: map_hits(prepared, maps) for maps in MAPS}
    acc = {maps: (max_box_acc(hits[maps], np.arange(n)), [max_box_acc(hits[maps], s) for s in samples])
           for maps in MAPS}
    print(f"\n### {name}: {n} images, {boot} bootstrap resamples (95% intervals)\n")
    print("| recipe | AP | AP50 | AP75 | AR100 | VOC mAP | MaxBoxAccV2 | box ms/img | img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, (point, draws, box_s, maps) in results.items():
        cells = [with_interval(point[m], [d[m] for d in draws], 4) for m in METRICS]
        wsol_point, wsol_draws = acc[maps]
        per_s = n / (prepared.forward_s[maps] + box_s)
        print(f"| {label} | {' | '.join(cells)} | {with_interval(wsol_point, wsol_draws, 3)} "
              f"| {1000 * box_s / n:.1f} | {per_s:.2f} |")
    base_point, base_draws, _, _ = results[ROWS[0][0]]
    print(f"\nRatios to seed (paired bootstrap, 95% intervals); default recipe: {DEFAULT_RECIPE}\n")
    print("| recipe | AP | AP50 | AP75 | AR100 | VOC mAP |\n| --- | --- | --- | --- | --- | --- |")
    for label, (point, draws, _, _) in list(results.items())[1:]:
        cells = [with_interval(point[m] / base_point[m], [d[m] / b[m] for d, b in zip(draws, base_draws) if b[m] > 0],
                               2, "×") if base_point[m] > 0 else "—" for m in METRICS]
        print(f"| {label} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamples (0: point estimates and timings)")
    parser.add_argument("--sets", default="real,synthetic", help="real, synthetic or both")
    args = parser.parse_args()
    torch.manual_seed(0)
    sets = args.sets.split(",")
    if "real" in sets:
        if not REAL_WEIGHTS.is_file():
            print(f"real set skipped: {SHARED} is missing")
        else:
            model, meta = load_model(REAL_WEIGHTS)
            prepared = prepare(model, meta, REAL_IMAGES, REAL_ANN, 448)
            bench_set("Real: coco-mini val2017 ∖ train2017, MobileNetV2 COCO-80 @ 448", model, meta, prepared, 448,
                      args.boot)
    if "synthetic" in sets:
        model, meta = load_model(DEMO_CHECKPOINT)
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(tmp, 0, 300, num_classes=len(meta["class_names"]), size=160, seed=1, max_objects=8)
            prepared = prepare(model, meta, data / "val", data / "annotations" / "instances_val.json", 320)
            bench_set("Synthetic: 300 unseen scenes (≤ 8 objects), demo model @ 320", model, meta, prepared, 320,
                      args.boot)


if __name__ == "__main__":
    main()
