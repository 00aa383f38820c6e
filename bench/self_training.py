"""Self-training, side by side: the default recipe's CAM boxes vs a detector trained on their pseudo-labels vs the
same detector trained on the true boxes, with 95 % paired bootstrap intervals — and the rule of
docs/decisions.md ("Self-training a detector") applied to the result.

Sets (nothing is tuned or selected on the measured images; every detector is its run's ``last.pt``):

* **synthetic**: pseudo-labels on 320 scenes of ``camloc.synthetic`` seed 0 (6 classes, 160 px, up to 8 objects:
  several instances per class) from the bundled demo model's maps at 320 px; measured on 300 scenes of seed 1
  (up to 8 objects: ``bench/recipes.py``'s synthetic set);
* **real**: pseudo-labels on the 369 images of coco-mini train2017 from the shared MobileNetV2 COCO-80 at 448 px;
  measured on the 92 val2017 images that are not in train2017.

Rows: (a) the default map method × recipe (``camloc.cam.DEFAULT_METHOD`` × ``camloc.boxes.DEFAULT_RECIPE``, its
own gate) on the measured images; (b) ``fasterrcnn_mobilenet_v2_fpn`` trained on (a)'s pseudo-labels of the
training images (``python -m camloc.pseudo`` with the filter it was pre-registered with, :data:`FIRST_FILTER`);
(c) the same detector and schedule on the true boxes of the training images (the supervised upper bound, for
scale); (b2) a second round: (b) re-labels the training images (``python -m camloc.pseudo --checkpoint`` (b)'s
``last.pt``, the same filter and image-level labels) and the same detector and schedule, started afresh, trains
on those. These detectors start from the classifier's backbone and keep it frozen (``--freeze-backbone``: the
pyramid and heads train; a CPU budget), AdamW, the schedules of :data:`SCHEDULES`. (t1), (t2): the variant picked
on a tuning set (synthetic seed 2, never a measured set: docs/decisions.md point 6), :data:`TUNED` — the default
filters of ``python -m camloc.pseudo``, the backbone fine-tuned, ``train --rounds 2`` (round 1, then both);
(ct) the tuned detector and schedule on the true boxes. COCO AP, AP50, AP75, AR100; ratios to (a) over the same
resamples of the images.

``PYTHONPATH=. python bench/self_training.py [--sets synthetic,real] [--rows t,ct | b,c,b2,t,ct] [--boot 200]
[--keep DIR [--reuse]]`` — the default rows, (a), (t1), (t2) and (ct), are what camloc's defaults do.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.recipes import COCO, REAL_ANN, REAL_IMAGES, REAL_WEIGHTS, interval, metrics, with_interval
from camloc.boxes import DEFAULT_RECIPE
from camloc.cam import DEFAULT_METHOD
from camloc.demo import DEMO_CHECKPOINT
from camloc.detector import DEFAULT_DETECTOR, Detector, load_detector
from camloc.evaluation import GroundTruth, coco_evaluate
from camloc.io.reader import read_split
from camloc.localize import Localizer
from camloc.models import load_model
from camloc.pseudo.cli import main as pseudo_main
from camloc.synthetic import generate
from train.cli import main as train_main

METRICS = ("AP", "AP50", "AP75", "AR100")
#: Per set: the training split, the measured split, the classifier, its maps' input size, and the detectors'
#: schedule (fixed before measuring: docs/decisions.md).
SCHEDULES: dict[str, dict[str, Any]] = {
    "synthetic": {"train": 320, "val": 300, "classes": 6, "size": 160, "max_objects": 8, "maps_size": 320,
                  "detector_size": 160, "epochs": 8, "batch": 8, "lr": 1e-3, "freeze": True},
    "real": {"maps_size": 448, "detector_size": 320, "epochs": 6, "batch": 8, "lr": 1e-3, "freeze": True},
}
#: The filter rows (b) and (b2) were pre-registered with (the filter every source had then; a classifier's default
#: has since changed: :data:`camloc.pseudo.DEFAULT_RULES`).
FIRST_FILTER = ["--min-relative", "0.5", "--top-k", "3", "--nms-iou", "0.3", "--min-side", "0.02"]
#: The variant picked on the synthetic seed-2 tuning set (docs/decisions.md, point 6), as changes to each set's
#: schedule: the backbone fine-tuned, two rounds (``train --rounds 2``), the default filters; on the synthetic
#: scenes the detector's input 1.5× the scenes' side (the real set keeps its size, as pre-registered).
TUNED: dict[str, dict[str, Any]] = {"synthetic": {"detector_size": 240, "freeze": False, "rounds": 2},
                                    "real": {"freeze": False, "rounds": 2}}
ROWS = ("(a) default recipe", "(b) detector on pseudo-labels", "(c) detector on true boxes",
        "(b2) second round: detector on (b)'s pseudo-labels",
        "(t1) tuned variant, round 1", "(t2) tuned variant, two rounds", "(ct) tuned variant's detector on true boxes")
#: The self-training rows the rule judges: one round, two rounds, the tuned variant (its round 1 is shown, not
#: judged: the variant picked is the two rounds).
SELF_TRAINED = (ROWS[1], ROWS[3], ROWS[5])


def per_image(found, images: list[dict]) -> list[list[dict]]:
    """Detections grouped by image, in ``images``' order (what :func:`bench.recipes.metrics` takes)."""
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for detection in found:
        by_image[detection["image_id"]].append(detection)
    return [by_image[im["id"]] for im in images]


def boxes_of(predictor, folder: Path, images: list[dict], batch: int = 8) -> list[list[dict]]:
    """Every image's detections from a Localizer or a Detector, a batch at a time."""
    found = []
    for readable, failed in read_split(folder, images, batch, "cpu"):
        if failed:
            raise SystemExit(f"unreadable measured image: {failed[0][1]}")
        found += predictor.detect([p for _, p in readable], [i for i, _ in readable]).to_dicts()
    return per_image(found, images)


def timed(what: str, seconds: dict[str, float], call, *args) -> Any:
    start = time.perf_counter()
    result = call(*args)
    seconds[what] = time.perf_counter() - start
    print(f"  {what}: {seconds[what]:.0f} s", flush=True)
    return result


def run_state(out: Path, ann: Path, schedule: dict[str, Any]) -> int | None:
    """The epochs ``out/last.pt`` has done if it is a run of this schedule on ``ann`` (``--reuse``), else ``None``."""
    if not (out / "last.pt").is_file():
        return None
    _, meta, extras = load_detector(out / "last.pt")
    given = meta.get("training", {})
    wanted = {"ann": str(ann), "img_size": str(schedule["detector_size"]), "epochs": str(schedule["epochs"]),
              "batch_size": str(schedule["batch"]), "lr": str(schedule["lr"]),
              "freeze_backbone": str(schedule["freeze"])}
    return extras.get("train_state", {}).get("epoch") if all(given.get(k) == v for k, v in wanted.items()) else None


def train(images: Path, ann: Path, out: Path, weights: Path, schedule: dict[str, Any], reuse: bool = False) -> Path:
    """``out/last.pt`` of a detector trained on ``ann`` with ``schedule`` (its ``rounds``: ``train --rounds``, the
    last round's ``last.pt``)."""
    rounds = schedule.get("rounds", 1)
    last = out / (f"round{rounds}" if rounds > 1 else "") / "last.pt"
    done = run_state(last.parent, last.parent / "pseudo.json" if rounds > 1 else ann, schedule) if reuse else None
    if done == schedule["epochs"]:
        print(f"  reusing {last} (a finished run of this schedule)", flush=True)
        return last
    # an unfinished run of this schedule goes on (its settings checked above: a checkpoint of an older camloc
    # records no fingerprint for train --resume to check)
    resume = ["--resume", "--resume-anyway"] if done is not None and rounds == 1 else []
    if resume:
        print(f"  resuming {last} after epoch {done} of {schedule['epochs']}", flush=True)
    code = train_main([*resume, "--detector", DEFAULT_DETECTOR, "--images", str(images), "--ann", str(ann),
                       "--out", str(out), "--weights", str(weights), *(["--freeze-backbone"] * schedule["freeze"]),
                       "--img-size", str(schedule["detector_size"]), "--epochs", str(schedule["epochs"]),
                       "--batch-size", str(schedule["batch"]), "--lr", str(schedule["lr"]), "--rounds", str(rounds),
                       "--workers", "1", "--device", "cpu", "--seed", "0"])
    if code != 0:
        raise SystemExit(f"detector training failed ({code})")
    return last


def quality(truth: Path, pseudo: Path) -> str:
    """COCO AP, AP50 and AR100 of the pseudo-labels (scored boxes) against the true boxes of the same images."""
    labels = json.loads(pseudo.read_text())
    found = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in labels["annotations"]]
    stats = coco_evaluate(GroundTruth(truth), found, [im["id"] for im in labels["images"]])["stats"]
    return (f"AP {stats[0]:.4f}, AP50 {stats[1]:.4f}, AR100 {stats[8]:.4f} ({len(found)} boxes on "
            f"{len(labels['images'])} images)")


def pseudo_file(what: str, seconds: dict[str, float], out: Path, images: Path, ann: Path, checkpoint: Path,
                options: list[str], reuse: bool) -> Path:
    """``python -m camloc.pseudo`` of the training images from ``checkpoint`` into ``out`` (``reuse``: one found
    there is kept), and its quality against their true boxes (a diagnostic: never used to make or pick them)."""
    if reuse and out.is_file():
        print(f"  reusing {out}", flush=True)
    elif timed(what, seconds, pseudo_main, ["--images", str(images), "--ann", str(ann), "--checkpoint", str(checkpoint),
                                            "--out", str(out), "--device", "cpu", "--workers", "1", *options]) != 0:
        raise SystemExit(f"{what} failed")
    print(f"  {what} against the training images' true boxes (diagnostic): {quality(ann, out)}", flush=True)
    return out


def run_set(name: str, train_images: Path, train_ann: Path, val_images: Path, val_ann: Path, weights: Path,
            work: Path, rows_wanted: set[str], reuse: bool = False
            ) -> tuple[GroundTruth, list[dict], dict[str, list[list[dict]]], dict[str, float]]:
    """Pseudo-labels, the detectors of the rows wanted (``b``, ``c``, ``b2``, ``t``: (t1) and (t2), ``ct``), and
    every row's detections on the measured images (``reuse``: the pseudo-labels and finished detector runs a
    previous run of these schedules left in ``work``)."""
    schedule, seconds, lasts = SCHEDULES[name], {}, {}
    tuned = {**schedule, **TUNED[name]}
    maps = ["--img-size", str(schedule["maps_size"])]
    if rows_wanted & {"b", "b2"}:
        first = pseudo_file("pseudo-labels", seconds, work / "pseudo.json", train_images, train_ann, weights,
                            [*maps, *FIRST_FILTER], reuse)
        lasts[ROWS[1]] = timed("detector on pseudo-labels", seconds, train, train_images, first, work / "pseudo",
                               weights, schedule, reuse)
    if "c" in rows_wanted:
        lasts[ROWS[2]] = timed("detector on true boxes", seconds, train, train_images, train_ann, work / "true",
                               weights, schedule, reuse)
    if "b2" in rows_wanted:  # round 2: (b) re-labels the training images
        second = pseudo_file("round-2 pseudo-labels", seconds, work / "pseudo2.json", train_images, train_ann,
                             lasts[ROWS[1]], FIRST_FILTER, reuse)
        lasts[ROWS[3]] = timed("detector on round-2 pseudo-labels", seconds, train, train_images, second,
                               work / "pseudo2", weights, schedule, reuse)
    if "t" in rows_wanted:
        labels = pseudo_file("tuned variant's pseudo-labels", seconds, work / "tuned_pseudo.json", train_images,
                             train_ann, weights, maps, reuse)
        lasts[ROWS[5]] = timed("tuned variant: two rounds", seconds, train, train_images, labels, work / "tuned",
                               weights, tuned, reuse)
        lasts[ROWS[4]] = work / "tuned" / "last.pt"
        print("  tuned variant's round-2 pseudo-labels (diagnostic): "
              + quality(train_ann, work / "tuned" / "round2" / "pseudo.json"), flush=True)
    if "ct" in rows_wanted:
        lasts[ROWS[6]] = timed("tuned variant's detector on true boxes", seconds, train, train_images, train_ann,
                               work / "tuned_true", weights, {**tuned, "rounds": 1}, reuse)
    truth = GroundTruth(val_ann)
    images = sorted(truth.data["images"], key=lambda im: im["id"])
    model, meta = load_model(weights)
    localizer = Localizer(model, meta, method=DEFAULT_METHOD, recipe=DEFAULT_RECIPE, img_size=schedule["maps_size"],
                          device="cpu")
    rows = {ROWS[0]: timed("default recipe on the measured images", seconds, boxes_of, localizer, val_images, images)}
    for row in ROWS[1:]:
        if row in lasts:
            rows[row] = timed(f"{row.split(' ')[0]} on the measured images", seconds, boxes_of,
                              Detector.from_checkpoint(lasts[row], device="cpu"), val_images, images)
    return truth, images, rows, seconds


def report(title: str, truth: GroundTruth, images: list[dict], rows: dict[str, list[list[dict]]], boot: int
           ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Print the set's table and its ratios to (a); returns ``{row: {metric: (ratio, low, high)}}``."""
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, len(images), len(images)) for _ in range(boot)]
    point = {row: metrics(truth, found, images) for row, found in rows.items()}
    draws = {row: [metrics(truth, found, images, s) for s in samples] for row, found in rows.items()}
    print(f"\n### {title}: {len(images)} images, {boot} bootstrap resamples (95 % intervals)\n")
    print("| row | " + " | ".join(METRICS) + " |\n| --- |" + " --- |" * len(METRICS))
    for row in rows:
        cells = [with_interval(point[row][m], [d[m] for d in draws[row]], 4) for m in METRICS]
        print(f"| {row} | {' | '.join(cells)} |")
    print("\nRatios to (a), paired\n")
    print("| row | " + " | ".join(METRICS) + " |\n| --- |" + " --- |" * len(METRICS))
    ratios: dict[str, dict[str, tuple[float, float, float]]] = {}
    base = ROWS[0]
    for row in [r for r in ROWS[1:] if r in rows]:
        ratios[row] = {}
        for m in METRICS:
            ratio = point[row][m] / point[base][m] if point[base][m] > 0 else math.nan
            paired = [d[m] / b[m] for d, b in zip(draws[row], draws[base]) if b[m] > 0]
            low, high = interval(paired) if paired else (math.nan, math.nan)
            ratios[row][m] = (ratio, low, high)
        print(f"| {row} | " + " | ".join(f"{r:.2f}× [{lo:.2f}, {hi:.2f}]" for r, lo, hi in ratios[row].values())
              + " |")
    return ratios


def verdict(results: dict[str, dict[str, dict[str, tuple[float, float, float]]]]) -> None:
    """The rule of docs/decisions.md: a gain on a set when the lower bounds of a self-trained row's AP and AP50
    ratios to (a) are above 1; self-training (each row of :data:`SELF_TRAINED` that was measured, judged alone: (b),
    (b2), the tuned variant's (t2)) is a gain (README) when it is one on both sets."""
    print("\n### The rule (docs/decisions.md, \"Self-training a detector\")\n")
    for name in [r for r in SELF_TRAINED if all(r in ratios for ratios in results.values())]:
        gains = {}
        for set_name, ratios in results.items():
            row = ratios[name]
            gains[set_name] = row["AP"][1] > 1 and row["AP50"][1] > 1
            said = "a gain" if gains[set_name] else "no gain"
            print(f"- {name}, {set_name}: AP {row['AP'][0]:.2f}× (lower bound {row['AP'][1]:.2f}), AP50 "
                  f"{row['AP50'][0]:.2f}× (lower bound {row['AP50'][1]:.2f}): {said}")
        if "synthetic" in results:
            row = results["synthetic"][name]
            met = row["AP"][0] >= 2 and row["AP50"][0] >= 1.5 and row["AP"][1] > 1 and row["AP50"][1] > 1
            print(f"- {name}: issue target on synthetic (AP ≥ 2×, AP50 ≥ 1.5×, lower bounds above 1): "
                  + ("met" if met else "not met"))
        if set(results) == {"synthetic", "real"}:
            print(f"  → {name}: {'a gain on both sets' if all(gains.values()) else 'not a gain on both sets'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="synthetic,real", help="synthetic, real or both")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--rows", default="t,ct",
                        help="the rows besides (a): t (the tuned variant's (t1) and (t2): what camloc's defaults do), "
                             "ct, and the first schedule's b, c, b2 (default t,ct: ~13 min of 2 CPU cores for the "
                             "synthetic set; all five ~22 min)")
    parser.add_argument("--keep", type=Path, help="keep the data, pseudo-labels and detectors in this folder")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse the pseudo-labels and the finished detector runs of this schedule "
                             "found there, resume the unfinished ones (the rows are measured again)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if "synthetic" in args.sets.split(","):
            s = SCHEDULES["synthetic"]
            print("synthetic set", flush=True)
            data = generate(root / "synthetic" / "train", s["train"], 0, s["classes"], s["size"], 0, s["max_objects"])
            measured = generate(root / "synthetic" / "val", 0, s["val"], s["classes"], s["size"], 1,
                                s["max_objects"])
            found = run_set("synthetic", data / "train", data / "annotations" / "instances_train.json",
                            measured / "val", measured / "annotations" / "instances_val.json", DEMO_CHECKPOINT,
                            root / "synthetic", set(args.rows.split(",")), args.reuse)
            seconds["synthetic"] = found[3]
            results["synthetic"] = report(f"Synthetic: {s['val']} unseen scenes (seed 1, ≤ {s['max_objects']} "
                                          "objects), demo model", *found[:3], args.boot)
        if "real" in args.sets.split(","):
            if not REAL_WEIGHTS.is_file():
                print(f"real set skipped: {REAL_WEIGHTS} is missing")
            else:
                print("real set", flush=True)
                found = run_set("real", COCO / "train2017", COCO / "annotations" / "instances_train2017_mini.json",
                                REAL_IMAGES, REAL_ANN, REAL_WEIGHTS, root / "real", set(args.rows.split(",")),
                                args.reuse)
                seconds["real"] = found[3]
                results["real"] = report("Real: coco-mini val2017 ∖ train2017, MobileNetV2 COCO-80", *found[:3],
                                         args.boot)
    for name, parts in seconds.items():
        print(f"\n{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items())
              + f"; total {sum(parts.values()) / 60:.1f} min")
    verdict(results)


if __name__ == "__main__":
    main()
