"""Map methods × box recipes × alignment, side by side, on real COCO images and on synthetic scenes, with 95% paired
bootstrap intervals — and docs/decisions.md's rule for the default (method, recipe, align) applied to the result.

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

Each row is (map method, box recipe, maps: the image alone, with its mirror, or six TTA views; alignment: the maps'
grid stretched over the image, or each view's maps laid where the model's measured geometry puts its cells): COCO AP,
AP50, AP75, AR100, VOC mAP@0.5, wsolevaluation's MaxBoxAccV2 of the maps (it scores the maps: the same
for every recipe on the same maps), the box stage's milliseconds per image and end-to-end images/s (the
passes its maps need — forward, and backward or masked passes for other methods than CAM — plus its box
stage). A gradient method computes the maps of each image's classes with p ≥ 0.001 and of the classes
present (for MaxBoxAccV2), so its img/s is a little pessimistic. Intervals: the images resampled with
replacement ``--boot`` times, the same resamples for every row, so ratios to ``seed`` are paired.

``PYTHONPATH=. python bench/recipes.py [--boot 1000] [--sets real,synthetic] [--methods cam,layercam-fused]
[--aligns none,measured]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.default_rule import choose_alignments, choose_default, interval
from camloc.calibration import QUANTILE, calibration_probabilities, class_thresholds
from camloc.cam import make_method
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import BoxAccuracy, GroundTruth, coco_evaluate, image_hits, recognised_classes, voc_map
from camloc.io.data import CocoIndex
from camloc.localize import Analysis, Localizer
from camloc.models import load_model
from camloc.models.geometry import model_geometry
from camloc.pipeline.analysis import view_sizes
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
    align: str = "none"  # how the maps are laid on the image: none | measured

    @property
    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options if k != "flip")
        extra += f" (q {self.quantile:g})" if self.quantile != QUANTILE else ""
        flipped = " on flip maps" if dict(self.options).get("flip") else ""
        tta = " on 6-view TTA maps" if self.maps == "tta" else ""
        aligned = ", aligned" if self.align == "measured" else ""
        return f"{self.method} × {self.recipe}{flipped}{tta}{extra}{aligned}"

    @property
    def key(self) -> tuple[str, str, str]:
        """Which prepared analyses the row boxes: (method, maps, align)."""
        return self.method, self.maps, self.align


#: The current default (CAM × multilevel on 6-view TTA maps, unaligned): the rule's cost limit is a multiple of
#: its time.
CURRENT_DEFAULT = Row("cam", "multilevel", "tta")
#: The full-image box: one box per gated class, whatever the maps.
FULL = Row("cam", "full", "plain")


def rows_for(methods: list[str], quantiles: tuple[float, ...] = (), aligns: tuple[str, ...] = ("none",)
             ) -> list[Row]:
    """The course recipe, the recipes on CAM maps, then every other method with the multi-level recipes
    (``quantiles``: more calibrated gates on CAM maps, for tuning), each with every alignment of ``aligns`` (the
    reference, ``seed`` on plain maps, and the full-image box only unaligned)."""
    plain = _rows(methods, quantiles)
    return [plain[0], *(replace(row, align=align) for row in plain[1:-1] for align in aligns), plain[-1]]


def _rows(methods: list[str], quantiles: tuple[float, ...]) -> list[Row]:
    rows = [Row("cam", "seed", "plain"), Row("cam", "seed", "flip", (("flip", True),)),
            Row("cam", "evidence", "plain"), Row("cam", "multilevel", "plain"), Row("cam", "instances", "plain"),
            Row("cam", "multilevel-flip", "flip"), Row("cam", "multilevel-flip", "flip", (("classes", CALIBRATED),)),
            *(Row("cam", "multilevel-flip", "flip", (("classes", CALIBRATED),), q) for q in quantiles),
            Row("cam", "multilevel", "tta")]
    for method in methods:
        if method == "cam":
            continue
        rows.append(Row(method, "multilevel", "plain"))
        if not method.startswith("scorecam"):  # one forward pass per channel: the mirror view too is too slow
            rows += [Row(method, "multilevel-flip", "flip"),
                     Row(method, "multilevel-flip", "flip", (("classes", CALIBRATED),))]
    return [*rows, FULL]


@dataclass
class Prepared:
    """One set's ground truth, images, calibrated thresholds and maps: analyses and seconds per (method, maps)."""

    truth: GroundTruth
    images: list[dict]
    calibration: tuple[Tensor, Tensor]  # probabilities and labels of the model's training images
    analyses: dict[tuple[str, str, str], list[Analysis]] = field(default_factory=dict)
    seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)


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
            methods: list[str], limit: int | None = None, aligns: tuple[str, ...] = ("none",)) -> Prepared:
    """CAM of every TTA view of every image once, then every other method's views; each kind of maps averages
    its views (as the Localizer does), for each alignment of ``aligns``. Each view is analysed once with the
    model's measured geometry (measured before the clock starts); unaligned, the same maps lose their frame —
    except a method whose maps themselves depend on it (fused layers), analysed again."""
    truth = GroundTruth(ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])[:limit]
    prepared = Prepared(truth, images, calibration)
    cam = Localizer(model, meta, img_size=img_size, tta=True, device="cpu", align="measured")
    all_views = cam.views()
    if "measured" in aligns:
        for size in view_sizes(img_size):
            print(f"  geometry at {size} px: {model_geometry(model, None, size, meta)}", flush=True)
    per_view, seconds = analyse_views(cam, folder, images, all_views)
    gated = [sorted(set(torch.nonzero(torch.maximum(a.probs, b.probs) >= 0.001).flatten().tolist()) | set(p))
             for a, b, p in zip(per_view[(1.0, False)], per_view[(1.0, True)], present_classes(truth, images))]
    for method in methods:
        name, options = METHOD_SPECS[method]
        kinds = ["plain", "tta"] if method == "cam" else ["plain"] if name == "scorecam" else ["plain", "flip"]
        per_align = {}
        for align in aligns:
            if method == "cam" or (align == "none" and "measured" in aligns
                                   and "align" not in make_method(name).parameters()):
                continue
            localizer = Localizer(model, meta, method=make_method(name, **options), img_size=img_size, device="cpu",
                                  align="measured" if "align" not in make_method(name).parameters() else align)
            views = sorted({v for kind in kinds for v in MAPS[kind]}, key=all_views.index)
            gates = gated if localizer.map_method.per_class else None
            per_align[align] = analyse_views(localizer, folder, images, views, gates)
            print(f"  {method} ({align}): {', '.join(f'{v}: {s:.0f} s' for v, s in per_align[align][1].items())}",
                  flush=True)
        for align in aligns:
            views_of, seconds_of = (per_view, seconds) if method == "cam" else per_align.get(
                align, per_align.get("measured"))
            for kind in {"plain", "flip"} | set(kinds) if method == "cam" else kinds:
                views = MAPS[kind] or all_views
                groups = [[a if align == "measured" else replace(a, frame=None) for a in group]
                          for group in zip(*(views_of[v] for v in views))]
                prepared.analyses[(method, kind, align)] = [Analysis.average(g) if len(g) > 1 else g[0]
                                                            for g in groups]
                prepared.seconds[(method, kind, align)] = sum(seconds_of[v] for v in views)
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


def map_hits(prepared: Prepared, key: tuple[str, str, str]) -> list[tuple[np.ndarray, list[bool]]]:
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
                          analysis.size, analysis.frame)
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
                              align=row.align, **options)
        start = time.perf_counter()
        per_image = detections(localizer, row.recipe, prepared.analyses[row.key], prepared.images)
        box_s = time.perf_counter() - start
        point = metrics(prepared.truth, per_image, prepared.images)
        results[row.label] = Result(point, [metrics(prepared.truth, per_image, prepared.images, s) for s in samples],
                                    seconds_per_image=(prepared.seconds[row.key] + box_s) / n)
        print(f"  {row.label}: AP {point['AP']:.4f}, AP50 {point['AP50']:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        box_ms[row.label] = 1000 * box_s / n
    base = results[rows[0].label]
    for result in results.values():
        for m in METRICS:
            result.ratio[m] = result.point[m] / base.point[m] if base.point[m] > 0 else math.nan
            result.ratio_draws[m] = [d[m] / b[m] for d, b in zip(result.draws, base.draws) if b[m] > 0]
    hits = {key: map_hits(prepared, key) for key in {r.key for r in rows}}
    acc = {key: (max_box_acc(h, np.arange(n)), [max_box_acc(h, s) for s in samples]) for key, h in hits.items()}
    print(f"\n### {name}: {n} images, {boot} bootstrap resamples (95% intervals)\n")
    print("| method × recipe | AP | AP50 | AP75 | AR100 | VOC mAP | MaxBoxAccV2 | box ms/img | img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        result = results[row.label]
        cells = [with_interval(result.point[m], [d[m] for d in result.draws], 4) for m in METRICS]
        wsol_point, wsol_draws = acc[row.key]
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
    parser.add_argument("--aligns", default="none,measured", help="none, measured or both (how maps are laid)")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check)")
    parser.add_argument("--tune", action="store_true", help="the tuning sets: coco-mini train2017 and synthetic seed 2")
    parser.add_argument("--tune-limit", type=int, default=120, help="train2017 images with --tune")
    args = parser.parse_args()
    torch.manual_seed(0)
    methods = ["cam", *(m for m in args.methods.split(",") if m != "cam")]
    unknown = set(methods) - set(METHOD_SPECS)
    if unknown:
        parser.error(f"unknown --methods {sorted(unknown)}; choose from {', '.join(METHOD_SPECS)}")
    aligns = tuple(args.aligns.split(","))
    if not aligns or set(aligns) - {"none", "measured"}:
        parser.error(f"--aligns takes none, measured or both, got {args.aligns!r}")
    rows = rows_for(methods, TUNING_QUANTILES if args.tune else (), aligns)
    sets, results = args.sets.split(","), {}
    if "real" in sets:
        if not REAL_WEIGHTS.is_file():
            print(f"real set skipped: {SHARED} is missing")
        else:
            model, meta = load_model(REAL_WEIGHTS)
            split, ann = (("train2017", "instances_train2017_mini.json") if args.tune
                          else ("val2017", "instances_val2017_mini_disjoint.json"))
            prepared = prepare(model, meta, COCO / split, COCO / "annotations" / ann, 448,
                               real_calibration(model, meta, 448), methods,
                               args.tune_limit if args.tune else args.limit,
                               aligns)
            results["real"] = bench_set(f"Real: coco-mini {split}{' (tuning)' if args.tune else ' ∖ train2017'}, "
                                        "MobileNetV2 COCO-80 @ 448", model, meta, prepared, 448, rows, args.boot)
    if "synthetic" in sets:
        model, meta = load_model(DEMO_CHECKPOINT)
        seed = 2 if args.tune else 1
        with tempfile.TemporaryDirectory() as tmp:
            calibration = synthetic_calibration(model, meta, 320, Path(tmp) / "train")
            count = args.limit or 300
            data = generate(Path(tmp) / "val", 0, count, num_classes=len(meta["class_names"]), size=160, seed=seed,
                            max_objects=8)
            prepared = prepare(model, meta, data / "val", data / "annotations" / "instances_val.json", 320,
                               calibration, methods, aligns=aligns)
            results["synthetic"] = bench_set(f"Synthetic: {count} unseen scenes (seed {seed}, ≤ 8 objects), demo model "
                                             "@ 320", model, meta, prepared, 320, rows, args.boot)
    if set(results) == {"real", "synthetic"} and args.boot > 0:
        choose_default(results, rows, CURRENT_DEFAULT, FULL)
        if set(aligns) == {"none", "measured"}:
            choose_alignments(results, rows)


if __name__ == "__main__":
    main()
