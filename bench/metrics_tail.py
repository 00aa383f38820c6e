"""What is left after a long run's last batch: the metrics and outputs of 5000 images, then and now, side by side.

Before, ``python -m eval`` matched, accumulated and formatted every detection after the last batch (the H200
profile: 9.0 of 17 s in "metrics + outputs" for 2000 images). Now each batch is matched and formatted as it
finishes (:class:`eval.results.RunResults`, in the finishing thread on a GPU) and only accumulation, summary and
the join remain. This bench builds a val2017-sized split (coco-mini val2017's annotations repeated under new ids)
and detections near its boxes (``--per-image`` each, 515 as the default recipe gave before the cap, 100 with it),
then times on this machine:

* before: ``localization_metrics`` + ``detections.json``'s text of all detections at once (the old tail);
* now, per batch of ``--batch`` images: :meth:`RunResults.add` (off the critical path);
* now, the tail: :meth:`RunResults.outputs`.

``PYTHONPATH=. python bench/metrics_tail.py [--images 5000] [--per-image 100]``; both give the same numbers
(checked here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from camloc.evaluation import Detections, GroundTruth, localization_metrics
from eval.results import RunResults, detection_rows

ROOT = Path(__file__).resolve().parents[1]
VAL_ANN = ROOT.parent / "shared" / "data" / "coco-mini" / "annotations" / "instances_val2017_mini.json"


def split(count: int) -> dict:
    """``count`` images: coco-mini val2017's, repeated under new ids, with their annotations."""
    data = json.loads(VAL_ANN.read_text())
    base = sorted(data["images"], key=lambda im: im["id"])
    anns_of: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for i in range(count):
        source = base[i % len(base)]
        images.append({**source, "id": i + 1})
        annotations += [{**a, "id": len(annotations) + j + 1, "image_id": i + 1}
                        for j, a in enumerate(anns_of.get(source["id"], []))]
    return {**data, "images": images, "annotations": annotations}


def detections(truth: GroundTruth, per_image: int, seed: int = 0) -> Detections:
    """``per_image`` detections on every image: jittered ground-truth boxes of its classes and random boxes of
    others, random scores."""
    rng = np.random.default_rng(seed)
    ids = truth.image_ids
    image = np.repeat(ids, per_image)
    category = rng.choice(truth.category_ids, len(image))
    bbox = np.column_stack([rng.uniform(0, 500, len(image)), rng.uniform(0, 400, len(image)),
                            rng.uniform(4, 300, len(image)), rng.uniform(4, 300, len(image))])
    first = np.searchsorted(truth.ann_image, ids)  # annotations are grouped by image, in id order
    count = np.searchsorted(truth.ann_image, ids, side="right") - first
    near = np.flatnonzero(np.repeat(count, per_image) > 0)[::3]  # a third near a ground-truth box
    pick = np.repeat(first, per_image)[near] + rng.integers(0, 1 << 30, len(near)) % np.repeat(count, per_image)[near]
    category[near] = truth.ann_category[pick]
    bbox[near] = truth.ann_bbox[pick] + rng.normal(0, 6, (len(near), 4))
    bbox[:, 2:] = np.maximum(bbox[:, 2:], 1.0)
    return Detections.from_arrays(image, category, bbox, rng.random(len(image)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    truth = GroundTruth(split(args.images))
    dets = detections(truth, args.per_image)
    images = [{"id": int(i)} for i in truth.image_ids]
    ids = truth.image_ids.tolist()

    start = time.perf_counter()
    before = localization_metrics(truth, dets, ids)
    text_before = "[" + ", ".join(detection_rows(dets)) + "]"
    old_tail = time.perf_counter() - start

    results = RunResults(truth, images)
    start = time.perf_counter()
    for lo in range(0, len(ids), args.batch):
        part = ids[lo:lo + args.batch]
        results.add(part, dets.rows(np.isin(dets.image, part)), [(np.zeros((0, 3, 100), bool), [])] * len(part))
    per_batch = (time.perf_counter() - start) / -(-len(ids) // args.batch)
    start = time.perf_counter()
    now, text_now = results.outputs(ids)
    new_tail = time.perf_counter() - start

    now.pop("wsol")
    same = now == before and text_now == text_before
    print(f"{args.images} images × {args.per_image} detections ({len(dets)}), batches of {args.batch}")
    print(f"before, after the last batch: {old_tail:.2f} s (match + accumulate + summarize + format)")
    print(f"now, during the run: {1000 * per_batch:.1f} ms per batch (match + format, beside the next batch)")
    print(f"now, after the last batch: {new_tail:.2f} s (accumulate + summarize + join) → "
          f"**{new_tail / old_tail:.2f}** of before; the same metrics and detections.json: {same}")


if __name__ == "__main__":
    main()
