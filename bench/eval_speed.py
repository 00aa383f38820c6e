"""Evaluator speed and parity, side by side in one run (``make bench``; figures quoted in the README).

1. A synthetic COCO set (5000 images, 80 categories, ~450k detections, crowd boxes, tied
   scores) evaluated by camloc, pycocotools and faster-coco-eval (C++): seconds, ratios, and
   whether the 12 stats are identical (``==``).
2. ``python -m eval`` throughput on coco-mini val2017 with the shared MobileNetV2 (images/s)
   vs a bare forward pass of the same model on the same batches.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def cli_benchmark(limit: int, batch: int) -> None:
    from eval.cli import main

    weights = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
    val = SHARED / "coco-mini" / "val2017"
    ann = SHARED / "coco-mini" / "annotations" / "instances_val2017_mini.json"
    if not weights.is_file():
        print("../shared/data missing: eval-CLI throughput skipped")
        return
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        code = main(["--images", str(val), "--ann", str(ann), "--checkpoint", str(weights), "--out", out,
              "--limit", str(limit), "--batch-size", str(batch), "--workers", "1"])
        cli = limit / (time.perf_counter() - start)
    if code != 0:
        raise SystemExit(f"python -m eval failed with exit code {code}")
    localizer = Localizer.from_checkpoint(weights, device="cpu")
    x = torch.randn(batch, 3, localizer.img_size, localizer.img_size)
    with torch.inference_mode():
        localizer.model(x)
        start = time.perf_counter()
        for _ in range(0, limit, batch):
            localizer.model(x)
        bare = limit / (time.perf_counter() - start)
    print(f"eval CLI on {limit} coco-mini val images (MobileNetV2, {localizer.img_size}², all 80 classes): "
          f"{cli:.1f} img/s end to end (decode, CAM, boxes, metrics) vs bare forward {bare:.1f} img/s "
          f"→ {cli / bare:.2f} of the forward-only rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=90)
    parser.add_argument("--cli-images", type=int, default=64)
    args = parser.parse_args()
    evaluator_benchmark(args.images, args.dets_per_image)
    cli_benchmark(args.cli_images, 8)


if __name__ == "__main__":
    main()
