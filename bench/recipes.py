"""Map methods × box recipes, side by side, on real COCO images and on synthetic scenes, with 95% paired
bootstrap intervals — and the README's rule for the default (method, recipe) applied to the result.

Sets (quality figures never come from the images anything was tuned on):

* **real**: the 92 images of ``coco-mini/val2017`` that are not in train2017
  (``instances_val2017_mini_disjoint.json``), the shared MobileNetV2 COCO-80 weights at 448 px;
* **synthetic**: 300 unseen scenes of ``camloc.synthetic`` (seed 1, up to 8 objects: several
  instances per class), the bundled demo model at 320 px (a 10×10 map grid).

``--tune`` runs the sets the parameters were chosen on instead: the first ``--tune-limit`` images of
coco-mini train2017 and synthetic seed 2 (the recipes' parameters, the methods' layers and caps, the
calibration quantile). The ``calibrated`` gate's thresholds come from each model's training images
(``camloc.calibration``): coco-mini train2017 for the shared model (which was trained on it), the demo
model's own training scenes (synthetic seed 0, 1200) for the demo model.

Each row is (map method, box recipe, maps: the image alone, with its mirror, or six TTA views): COCO AP,
AP50, AP75, AR100, VOC mAP@0.5, wsolevaluation's MaxBoxAccV2 of the maps (it scores the maps: the same
for every recipe on the same maps), the box stage's milliseconds per image and end-to-end images/s (the
passes its maps need — forward, and backward or masked passes for other methods than CAM — plus its box
stage). A gradient method computes the maps of each image's classes with p ≥ 0.001 and of the classes
present (for MaxBoxAccV2), so its img/s is a little pessimistic. Intervals: the images resampled with
replacement ``--boot`` times, the same resamples for every row, so ratios to ``seed`` are paired.

``PYTHONPATH=. python bench/recipes.py [--boot 1000] [--sets real,synthetic] [--methods cam,layercam-fused]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camloc.boxes import DEFAULT_RECIPE
from camloc.calibration import QUANTILE, calibration_probabilities, class_thresholds
from camloc.cam import DEFAULT_METHOD, make_method
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import BoxAccuracy, GroundTruth, coco_evaluate, image_hits, recognised_classes, voc_map
from camloc.io.data import CocoIndex
from camloc.localize import Analysis, Localizer
from camloc.models import load_model
from camloc.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COCO = SHARED / "coco-mini"
REAL_WEIGHTS = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
#: The real evaluation set: the 92 coco-mini val2017 images that are not in train2017.
REAL_IMAGES = COCO / "val2017"
REAL_ANN = COCO / "annotations" / "instances_val2017_mini_disjoint.json"
METRICS = ("AP", "AP50", "AP75", "AR100", "VOC")
#: MobileNetV2's last stride-16 block (both sets' models are MobileNetV2s): 28×28 maps at 448 px.
STRIDE_16 = "features.13"

#: Map methods by key: (registered name, options). Grad-CAM, XGrad-CAM and HiResCAM at the feature layer
#: equal CAM / (h·w) exactly (tests/test_cam_methods.py): the same boxes, so no rows of their own there.
METHOD_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "cam": ("cam", {}),
    "gradcampp": ("gradcampp", {}),
    "layercam": ("layercam", {}),
    "layercam@16": ("layercam", {"layer": STRIDE_16}),
    "hirescam@16": ("hirescam", {"layer": STRIDE_16}),
    "layercam-fused": ("layercam-fused", {}),
    "eigencam": ("eigencam", {}),
    "scorecam-32": ("scorecam", {"max_channels": 32}),
    "layercam-fused-2": ("layercam-fused", {"stages": 2}),
}
#: Variants compared only on the tuning sets (``--tune``; pass them to ``--methods``), and the calibrated gate's
#: quantiles tried there besides the default.
TUNING_ONLY = ("layercam-fused-2",)
TUNING_QUANTILES = (0.0, 0.2)
#: Which of the six TTA views (in ``Localizer.views()`` order) each kind of maps averages.
MAPS = {"plain": [(1.0, False)], "flip": [(1.0, False), (1.0, True)], "tta": None}
#: The gate every recipe but ``seed`` uses by default, and the per-class one (point 5 of the issue).
GLOBAL_GATE, CALIBRATED = "prob:0.001", "calibrated"


@dataclass(frozen=True)
class Row:
    """One line of the tables: maps of ``method`` (a :data:`METHOD_SPECS` key) of kind ``maps``, boxed by
    ``recipe`` (or ``"full"``: one full-image box per gated class) with ``options``."""

    method: str
    recipe: str
    maps: str
    options: tuple[tuple[str, Any], ...] = ()
    quantile: float = QUANTILE  # of the calibrated gate's thresholds

    @property
    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options if k != "flip")
        extra += f" (q {self.quantile:g})" if self.quantile != QUANTILE else ""
        flipped = " on flip maps" if dict(self.options).get("flip") else ""
        tta = " on 6-view TTA maps" if self.maps == "tta" else ""
        return f"{self.method} × {self.recipe}{flipped}{tta}{extra}"


def rows_for(methods: list[str], quantiles: tuple[float, ...] = ()) -> list[Row]:
    """The course recipe, the recipes on CAM maps, then every other method with the multi-level recipes
    (``quantiles``: more calibrated gates on CAM maps, for tuning)."""
    rows = [Row("cam", "seed", "plain"), Row("cam", "seed", "flip", (("flip", True),)),
            Row("cam", "evidence", "plain"), Row("cam", "multilevel", "plain"), Row("cam", "instances", "plain"),
            Row("cam", "multilevel-flip", "flip"), Row("cam", "multilevel-flip", "flip", (("classes", CALIBRATED),)),
            *(Row("cam", "multilevel-flip", "flip", (("classes", CALIBRATED),), q) for q in quantiles),
            Row("cam", "multilevel", "tta"), Row("cam", "full", "plain")]
    for method in methods:
        if method == "cam":
            continue
        rows.append(Row(method, "multilevel", "plain"))
        if not method.startswith("scorecam"):  # one forward pass per channel: the mirror view too is too slow
            rows += [Row(method, "multilevel-flip", "flip"),
                     Row(method, "multilevel-flip", "flip", (("classes", CALIBRATED),))]
    return rows


@dataclass
class Prepared:
    """One set's ground truth, images, calibrated thresholds and maps: analyses and seconds per (method, maps)."""

    truth: GroundTruth
    images: list[dict]
    calibration: tuple[Tensor, Tensor]  # probabilities and labels of the model's training images
    analyses: dict[tuple[str, str], list[Analysis]] = field(default_factory=dict)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)


def present_classes(truth: GroundTruth, images: list[dict]) -> list[list[int]]:
    """Per image, the class indices (category order) with a non-crowd box."""
    index = {cid: k for k, cid in enumerate(truth.category_ids.tolist())}
    present: dict[int, set[int]] = {}
    for a in truth.data["annotations"]:
        if not a.get("iscrowd", 0):
            present.setdefault(a["image_id"], set()).add(index[a["category_id"]])
    return [sorted(present.get(im["id"], ())) for im in images]


def analyse_views(localizer: Localizer, folder: Path, images: list[dict], views: list[tuple[float, bool]],
                  classes: list[list[int]] | None = None, batch: int = 8) -> tuple[dict, dict]:
    """Each view's analyses of every image (``classes``: each image's own) and the seconds it took."""
    found, seconds = {}, {}
    for view in views:
        start, out = time.perf_counter(), []
        for i in range(0, len(images), batch):
            files = [folder / im["file_name"] for im in images[i:i + batch]]
            out += localizer.analyze(files, None if classes is None else classes[i:i + batch], views=[view])
        found[view], seconds[view] = out, time.perf_counter() - start
    return found, seconds


def prepare(model, meta, folder: Path, ann: Path, img_size: int, calibration: tuple[Tensor, Tensor],
            methods: list[str], limit: int | None = None) -> Prepared:
    """CAM of every TTA view of every image once, then every other method's views; each kind of maps averages
    its views (as the Localizer does)."""
    truth = GroundTruth(ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])[:limit]
    prepared = Prepared(truth, images, calibration)
    cam = Localizer(model, meta, img_size=img_size, tta=True, device="cpu")
    all_views = cam.views()
    per_view, seconds = analyse_views(cam, folder, images, all_views)
    gated = [sorted(set(torch.nonzero(torch.maximum(a.probs, b.probs) >= 0.001).flatten().tolist()) | set(p))
             for a, b, p in zip(per_view[(1.0, False)], per_view[(1.0, True)], present_classes(truth, images))]
    for method in methods:
        name, options = METHOD_SPECS[method]
        kinds = ["plain", "tta"] if method == "cam" else ["plain"] if name == "scorecam" else ["plain", "flip"]
        if method != "cam":
            localizer = Localizer(model, meta, method=make_method(name, **options), img_size=img_size, device="cpu")
            views = sorted({v for kind in kinds for v in MAPS[kind]}, key=all_views.index)
            per_class = localizer.map_method.per_class
            per_view, seconds = analyse_views(localizer, folder, images, views, gated if per_class else None)
            print(f"  {method}: {', '.join(f'{v}: {s:.0f} s' for v, s in seconds.items())}", flush=True)
        for kind in {"plain", "flip"} | set(kinds) if method == "cam" else kinds:
            views = MAPS[kind] or all_views
            prepared.analyses[(method, kind)] = [Analysis.average(group) if len(views) > 1 else group[0]
                                                 for group in zip(*(per_view[v] for v in views))]
            prepared.seconds[(method, kind)] = sum(seconds[v] for v in views)
    return prepared


def detections(localizer: Localizer, recipe: str, analyses: list[Analysis], images: list[dict]) -> list[list[dict]]:
    if recipe == "full":
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


def map_hits(prepared: Prepared, key: tuple[str, str]) -> list[tuple[np.ndarray, list[bool]]]:
    """wsolevaluation hits and recognition flags of every (image, present class) map, per image."""
    truth = prepared.truth
    cat_index = {cid: k for k, cid in enumerate(truth.category_ids.tolist())}
    boxes: dict[int, dict[int, list]] = {}
    for a in truth.data["annotations"]:
        if not a.get("iscrowd", 0):
            boxes.setdefault(a["image_id"], {}).setdefault(cat_index[a["category_id"]], []).append(a["bbox"])
    out = []
    for im, analysis in zip(prepared.images, prepared.analyses[key]):
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


def interval(draws: list[float]) -> tuple[float, float]:
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def with_interval(point: float, draws: list[float], digits: int, unit: str = "") -> str:
    """``point`` and the central 95% of its bootstrap ``draws`` (the point alone without draws: ``--boot 0``)."""
    text = f"{point:.{digits}f}{unit}"
    if not draws:
        return text
    low, high = interval(draws)
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


@dataclass
class Result:
    """One row on one set: point metrics, bootstrap draws, paired ratios to seed, seconds per image."""

    point: dict[str, float]
    draws: list[dict[str, float]]
    ratio: dict[str, float] = field(default_factory=dict)
    ratio_draws: dict[str, list[float]] = field(default_factory=dict)
    seconds_per_image: float = 0.0


def bench_set(name: str, model, meta, prepared: Prepared, img_size: int, rows: list[Row], boot: int,
              seed: int = 0) -> dict[str, Result]:
    n = len(prepared.images)
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, n, n) for _ in range(boot)]
    results: dict[str, Result] = {}
    box_ms = {}
    for row in rows:
        options = dict(row.options)
        calibrated = {**meta, "class_thresholds": class_thresholds(*prepared.calibration, row.quantile)}
        localizer = Localizer(model, calibrated if options.get("classes") == CALIBRATED else meta,
                              recipe="seed" if row.recipe == "full" else row.recipe, img_size=img_size, device="cpu",
                              **options)
        start = time.perf_counter()
        per_image = detections(localizer, row.recipe, prepared.analyses[(row.method, row.maps)], prepared.images)
        box_s = time.perf_counter() - start
        point = metrics(prepared.truth, per_image, prepared.images)
        results[row.label] = Result(point, [metrics(prepared.truth, per_image, prepared.images, s) for s in samples],
                                    seconds_per_image=(prepared.seconds[(row.method, row.maps)] + box_s) / n)
        box_ms[row.label] = 1000 * box_s / n
    base = results[rows[0].label]
    for result in results.values():
        for m in METRICS:
            result.ratio[m] = result.point[m] / base.point[m] if base.point[m] > 0 else math.nan
            result.ratio_draws[m] = [d[m] / b[m] for d, b in zip(result.draws, base.draws) if b[m] > 0]
    hits = {key: map_hits(prepared, key) for key in {(r.method, r.maps) for r in rows}}
    acc = {key: (max_box_acc(h, np.arange(n)), [max_box_acc(h, s) for s in samples]) for key, h in hits.items()}
    print(f"\n### {name}: {n} images, {boot} bootstrap resamples (95% intervals)\n")
    print("| method × recipe | AP | AP50 | AP75 | AR100 | VOC mAP | MaxBoxAccV2 | box ms/img | img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        result = results[row.label]
        cells = [with_interval(result.point[m], [d[m] for d in result.draws], 4) for m in METRICS]
        wsol_point, wsol_draws = acc[(row.method, row.maps)]
        print(f"| {row.label} | {' | '.join(cells)} | {with_interval(wsol_point, wsol_draws, 3)} "
              f"| {box_ms[row.label]:.1f} | {1 / result.seconds_per_image:.2f} |")
    print("\nRatios to seed (paired bootstrap, 95% intervals)\n")
    print("| method × recipe | AP | AP50 | AP75 | AR100 | VOC mAP |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows[1:]:
        result = results[row.label]
        cells = [with_interval(result.ratio[m], result.ratio_draws[m], 2, "×") if base.point[m] > 0 else "—"
                 for m in METRICS]
        print(f"| {row.label} | {' | '.join(cells)} |")
    return results


#: The README's rule: a default may cost at most this many times the current default's seconds per real image.
COST_LIMIT = 10.0
#: The default the rule was applied against (its choice, CAM × multilevel on 6-view TTA maps, is now
#: ``multilevel-tta``).
CURRENT_DEFAULT = Row("cam", "multilevel-flip", "flip")


def choose_default(results: dict[str, dict[str, Result]], rows: list[Row]) -> None:
    """Apply the rule written in the README (section "The default map method and recipe") and print why."""
    sets = list(results)
    full = Row("cam", "full", "plain").label
    limit = COST_LIMIT * results["real"][CURRENT_DEFAULT.label].seconds_per_image
    candidates = [r.label for r in rows[1:] if r.recipe != "full"  # TTA rows included, as the rule says
                  and results["real"][r.label].seconds_per_image <= limit]
    low = {label: {s: {m: interval(results[s][label].ratio_draws[m])[0] for m in ("AP", "AP50")} for s in sets}
           for label in candidates}
    qualified = [label for label in candidates if all(
        low[label][s][m] >= 1.0 and results[s][label].point[m] > results[s][full].point[m]
        for s in sets for m in ("AP", "AP50"))]

    def gain(label: str) -> float:
        return float(np.exp(np.mean([np.log(results[s][label].ratio[m]) for s in sets for m in ("AP", "AP50")])))

    print(f"\n### The rule (README), current default {DEFAULT_METHOD} × {DEFAULT_RECIPE}\n")
    print(f"candidates within {COST_LIMIT:g}× the current default's time per real image "
          f"({limit:.2f} s): {len(candidates)} of {len(rows) - 1}")
    for label in candidates:
        marks = ", ".join(f"{s} AP50 ≥ {low[label][s]['AP50']:.2f}, AP ≥ {low[label][s]['AP']:.2f}" for s in sets)
        print(f"- {label}: {'qualifies' if label in qualified else 'no'} ({marks}; gain {gain(label):.2f}×)")
    if qualified:
        chosen = max(qualified, key=gain)
        print(f"\nrule picks: {chosen} (highest geometric mean of its AP and AP50 ratios on both sets)")
    else:
        chosen = max(candidates, key=lambda label: min(low[label][s]["AP50"] for s in sets))
        print(f"\nno candidate qualifies; best AP50 lower bound: {chosen}")
    targets = all(results[s][chosen].ratio[m] >= 1.5 for s in sets for m in ("AP", "AP50")) and all(
        low[chosen][s]["AP50"] > 1.0 for s in sets)
    print(f"issue targets (AP and AP50 ≥ 1.5× seed on both sets, AP50 interval above 1): "
          f"{'met' if targets else 'not met'}")


def real_calibration(model, meta, img_size: int) -> tuple[Tensor, Tensor]:
    """The shared model's probabilities on coco-mini train2017 (the images its head was trained on)."""
    index = CocoIndex(COCO / "annotations" / "instances_train2017_mini.json", COCO / "train2017")
    return calibration_probabilities(model, meta, index, 16, "cpu", img_size)


def synthetic_calibration(model, meta, img_size: int, folder: Path) -> tuple[Tensor, Tensor]:
    """The demo model's probabilities on its own training scenes (synthetic seed 0, 1200)."""
    data = generate(folder, 1200, 0, num_classes=len(meta["class_names"]), size=160, seed=0)
    index = CocoIndex(data / "annotations" / "instances_train.json", data / "train")
    return calibration_probabilities(model, meta, index, 16, "cpu", img_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (0: point estimates and timings)")
    parser.add_argument("--sets", default="real,synthetic", help="real, synthetic or both")
    parser.add_argument("--methods", default=",".join(m for m in METHOD_SPECS if m not in TUNING_ONLY),
                        help=f"of {', '.join(METHOD_SPECS)}")
    parser.add_argument("--tune", action="store_true", help="the tuning sets: coco-mini train2017 and synthetic seed 2")
    parser.add_argument("--tune-limit", type=int, default=120, help="train2017 images with --tune")
    args = parser.parse_args()
    torch.manual_seed(0)
    methods = ["cam", *(m for m in args.methods.split(",") if m != "cam")]
    unknown = set(methods) - set(METHOD_SPECS)
    if unknown:
        parser.error(f"unknown --methods {sorted(unknown)}; choose from {', '.join(METHOD_SPECS)}")
    rows = rows_for(methods, TUNING_QUANTILES if args.tune else ())
    sets, results = args.sets.split(","), {}
    if "real" in sets:
        if not REAL_WEIGHTS.is_file():
            print(f"real set skipped: {SHARED} is missing")
        else:
            model, meta = load_model(REAL_WEIGHTS)
            split, ann = (("train2017", "instances_train2017_mini.json") if args.tune
                          else ("val2017", "instances_val2017_mini_disjoint.json"))
            prepared = prepare(model, meta, COCO / split, COCO / "annotations" / ann, 448,
                               real_calibration(model, meta, 448), methods, args.tune_limit if args.tune else None)
            results["real"] = bench_set(f"Real: coco-mini {split}{' (tuning)' if args.tune else ' ∖ train2017'}, "
                                        "MobileNetV2 COCO-80 @ 448", model, meta, prepared, 448, rows, args.boot)
    if "synthetic" in sets:
        model, meta = load_model(DEMO_CHECKPOINT)
        seed = 2 if args.tune else 1
        with tempfile.TemporaryDirectory() as tmp:
            calibration = synthetic_calibration(model, meta, 320, Path(tmp) / "train")
            data = generate(Path(tmp) / "val", 0, 300, num_classes=len(meta["class_names"]), size=160, seed=seed,
                            max_objects=8)
            prepared = prepare(model, meta, data / "val", data / "annotations" / "instances_val.json", 320,
                               calibration, methods)
            results["synthetic"] = bench_set(f"Synthetic: 300 unseen scenes (seed {seed}, ≤ 8 objects), demo model "
                                             "@ 320", model, meta, prepared, 320, rows, args.boot)
    if set(results) == {"real", "synthetic"} and args.boot > 0:
        choose_default(results, rows)


if __name__ == "__main__":
    main()
