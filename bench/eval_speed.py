"""Evaluator speed and parity, side by side in one run (``make bench``; figures quoted in the README).

1. A synthetic COCO set (5000 images, 80 categories, ~450k detections, crowd boxes, tied
   scores) evaluated by camloc, pycocotools and faster-coco-eval (C++): seconds, ratios, and
   whether the 12 stats are identical (``==``).
2. ``python -m eval`` throughput (images/s, end to end: decode, forward, maps, boxes, WSOL hits;
   model loading and the final metrics excluded) on coco-mini val2017 images, for MobileNetV2
   (the shared COCO-80 weights) and ResNet-50 (random backbone; the COCO-80 head of the shared
   model's biases, so its class probabilities and gating look like a real model's), both at
   448², with the box stage in the main process (``--box-workers 0``) and in worker processes,
   for the course recipe and the default one — next to the bare forward rate of the same
   model and batch (per image, the network passes a recipe needs: one view, or two for a
   ``flip`` recipe).
3. The device map stage vs the CPU path, per image (here the "device" is this CPU: the same
   code runs on a GPU, where it takes the per-pixel work off the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from camloc.boxes import DEFAULT_RECIPE, FULL_RESOLUTION
from camloc.evaluation import coco_evaluate
from camloc.localize import Localizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def synthetic_set(images: int, categories: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list]:
    """GT with ~7 objects per image (2% crowds) and detections: jittered GT copies plus clutter,
    scores rounded to 2 decimals so that many tie."""
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"class{i + 1}"} for i in range(categories)]
    anns = []
    n_obj = rng.poisson(7, images)
    img_of = np.repeat(np.arange(1, images + 1), n_obj)
    size = rng.choice([12.0, 48.0, 160.0], len(img_of)) * rng.uniform(0.5, 2.0, (len(img_of), 2)).T
    xy = rng.uniform(0, 500, (2, len(img_of)))
    cat_of = rng.integers(1, categories + 1, len(img_of))
    crowd = rng.random(len(img_of)) < 0.02
    for i in range(len(img_of)):
        w, h = float(size[0, i]), float(size[1, i])
        anns.append({"id": i + 1, "image_id": int(img_of[i]), "category_id": int(cat_of[i]),
                     "bbox": [float(xy[0, i]), float(xy[1, i]), w, h], "area": w * h * 0.8, "iscrowd": int(crowd[i])})
    dets = []
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id in range(1, images + 1):
        own = by_image.get(image_id, [])
        n = rng.poisson(dets_per_image)
        from_gt = min(n, 3 * len(own))
        for j in range(n):
            if j < from_gt:
                g = own[j % len(own)]
                box = np.array(g["bbox"]) * rng.normal(1, 0.1, 4)
                category = g["category_id"]
            else:
                box = np.r_[rng.uniform(0, 500, 2), rng.uniform(5, 200, 2)]
                category = int(rng.integers(1, categories + 1))
            dets.append({"image_id": image_id, "category_id": category, "bbox": box.tolist(),
                         "score": round(float(rng.random()), 2)})
    return {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)], "categories": cats,
            "annotations": anns}, dets


def run_pycocotools(gt: dict, dets: list) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def run_faster_coco_eval(gt: dict, dets: list) -> list[float] | None:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(copy.deepcopy(gt))
        evaluator = COCOeval_faster(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats[:12]]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def evaluator_benchmark(images: int, dets_per_image: int) -> None:
    gt, dets = synthetic_set(images, 80, dets_per_image)
    crowds = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"synthetic set: {images} images, 80 categories, {len(gt['annotations'])} GT boxes ({crowds} crowd), "
          f"{len(dets)} detections")
    ours, t_ours = timed(lambda: coco_evaluate(gt, dets)["stats"])
    theirs, t_theirs = timed(run_pycocotools, gt, dets)
    print(f"  camloc            {t_ours:7.2f} s")
    print(f"  pycocotools       {t_theirs:7.2f} s   camloc is {t_theirs / t_ours:.1f}× faster; "
          f"12 stats identical (==): {ours == theirs}")
    fast, t_fast = timed(run_faster_coco_eval, gt, dets)
    if fast is None:
        print("  faster-coco-eval not installed (make bench installs it in .venv-bench): skipped")
    else:
        diff = max(abs(a - b) for a, b in zip(fast, theirs))
        print(f"  faster-coco-eval  {t_fast:7.2f} s   camloc is {t_fast / t_ours:.2f}× faster; "
              f"its max |Δ| to pycocotools: {diff:.2e}")


def bare_forward(localizer: Localizer, batch: int, repeats: int, trials: int = 3) -> float:
    """Images per second of the model alone on ``batch`` random images at the Localizer's input size:
    the best of ``trials`` timings (the least disturbed by this shared machine's neighbours, so the
    ratios of the eval CLI to it are on the safe side)."""
    x = torch.randn(batch, 3, localizer.img_size, localizer.img_size)
    rates = []
    with torch.inference_mode():
        localizer.model(x)
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(repeats):
                localizer.model(x)
            rates.append(batch * repeats / (time.perf_counter() - start))
    return max(rates)


def resnet50_checkpoint(folder: Path) -> Path:
    """A ResNet-50 COCO-80 checkpoint: random backbone, the shared model's head biases, small head weights."""
    from camloc.models import build_model, load_model, save_checkpoint
    from camloc.models.classes import COCO_NAMES

    shared, _ = load_model(SHARED / "weights" / "mobilenet_v2_coco80_linear.pth")
    torch.manual_seed(0)
    model, meta = build_model("resnet50", list(COCO_NAMES), input_size=448)
    with torch.no_grad():
        model.head.weight.normal_(std=0.01)
        model.head.bias.copy_(shared.head.bias)
    path = folder / "resnet50_coco80.pt"
    save_checkpoint(model, meta, path)
    return path


def cli_rate(checkpoint: Path, ann: Path, images: Path, recipe: str, box_workers: int, batch: int) -> float:
    from eval.cli import main

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        code = main(["--images", str(images), "--ann", str(ann), "--checkpoint", str(checkpoint), "--out", out,
                     "--recipe", recipe, "--batch-size", str(batch), "--workers", "1",
                     "--box-workers", str(box_workers), "--device", "cpu"])
        if code != 0:
            raise SystemExit(f"python -m eval failed with exit code {code}")
        return json.loads((Path(out) / "metrics.json").read_text())["images_per_second"]


def cli_benchmark(repeat: int, batch: int) -> None:
    from camloc.runtime.workerpool import default_box_workers

    weights = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
    val = SHARED / "coco-mini" / "val2017"
    ann = SHARED / "coco-mini" / "annotations" / "instances_val2017_mini.json"
    if not weights.is_file():
        print("../shared/data missing: eval-CLI throughput skipped")
        return
    workers = default_box_workers()
    with tempfile.TemporaryDirectory() as tmp:
        data = json.loads(ann.read_text())
        copies = {**data, "images": [{**im, "id": im["id"] * 10 + r} for r in range(repeat) for im in data["images"]],
                  "annotations": [{**a, "id": a["id"] * 10 + r, "image_id": a["image_id"] * 10 + r}
                                  for r in range(repeat) for a in data["annotations"]]}
        repeated = Path(tmp) / "val_repeated.json"
        repeated.write_text(json.dumps(copies))
        print(f"\npython -m eval on {len(copies['images'])} coco-mini val images (each {repeat}×), 448², "
              f"batch {batch}, this machine's {os.cpu_count()} cores; default --box-workers here: {workers}")
        print("| model | recipe | bare forward img/s (per recipe's passes) | eval, box stage inline | "
              f"eval, {workers} box worker(s) |\n| --- | --- | --- | --- | --- |")
        for label, checkpoint in [("MobileNetV2", weights), ("ResNet-50", resnet50_checkpoint(Path(tmp)))]:
            localizer = Localizer.from_checkpoint(checkpoint, device="cpu")
            bare = bare_forward(localizer, batch, max(2, 64 // batch))
            for recipe in ("seed", DEFAULT_RECIPE):
                passes = len(localizer.views(recipe))
                inline = cli_rate(checkpoint, repeated, val, recipe, 0, batch)
                pooled = cli_rate(checkpoint, repeated, val, recipe, workers, batch)
                ref = bare / passes
                print(f"| {label} | {recipe} | {ref:.2f} | {inline:.2f} ({inline / ref:.2f}) "
                      f"| {pooled:.2f} (**{pooled / ref:.2f}**) |")


def device_stage_benchmark() -> None:
    """Box stage per image: the CPU path vs the device path run on this CPU, on a real image's maps."""
    from camloc.boxes import make_recipe

    weights = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
    if not weights.is_file():
        return
    localizer = Localizer.from_checkpoint(weights, device="cpu")
    image = sorted((SHARED / "coco-mini" / "val2017").glob("*.jpg"))[0]
    analysis = localizer.analyze(image, views=[(1.0, False), (1.0, True)])[0]
    print(f"\nbox stage of one real image ({analysis.size[1]}×{analysis.size[0]}), ms: CPU path vs device path "
          "(device = this CPU)")
    for name in ("seed", DEFAULT_RECIPE):
        recipe = make_recipe(name, **({} if name == "seed" else {"box_scale": FULL_RESOLUTION}))
        classes = torch.nonzero(recipe.select(analysis.probs[None])[0]).flatten()
        raw, probs = analysis.raw_maps[classes], analysis.probs[classes]
        paths = [("CPU", recipe.boxes), ("device path", recipe.device_boxes)]
        if name != "seed":  # the default: boxes at 2× the feature grid, whole-batch tensor work on any device
            paths.append(("on the grid (default box_scale)", make_recipe(name).boxes))
        times = {}
        for path, run in paths:
            run(raw, probs, analysis.size)
            start = time.perf_counter()
            for _ in range(3):
                run(raw, probs, analysis.size)
            times[path] = (time.perf_counter() - start) / 3 * 1000
        print(f"  {name:16s} ({len(classes)} classes, full resolution unless said): "
              + ", ".join(f"{path} {ms:.1f} ms" for path, ms in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=2, help="how many times the eval runs see each val image")
    parser.add_argument("--skip-evaluator", action="store_true")
    args = parser.parse_args()
    if not args.skip_evaluator:
        evaluator_benchmark(args.images, args.dets_per_image)
    cli_benchmark(args.repeat, 8)
    device_stage_benchmark()


if __name__ == "__main__":
    main()
