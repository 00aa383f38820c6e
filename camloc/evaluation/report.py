"""One JSON-ready report: what `python -m eval` writes and the app's PR page reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camloc.evaluation.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS, coco_evaluate
from camloc.evaluation.inputs import Detections, GroundTruth
from camloc.evaluation.voc import voc_map


def _curve(values: np.ndarray) -> list[float] | None:
    return None if (values < 0).all() else [round(float(v), 6) for v in np.clip(values, 0, None)]


def localization_metrics(gt: str | Path | dict | GroundTruth, detections: Detections | str | Path | Sequence[dict],
                         image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """COCO stats, VOC mAP@0.5, per-class APs and PR curves, as plain JSON data.

    ``coco``: the 12 stats by name; ``voc_map50``; ``per_class``: a list of
    ``{category_id, name, num_gt, AP, AP50, AP75, voc_AP50}`` (None without ground truth);
    ``pr_curves``: ``recall`` (the 101 points) and per category id the precision at IoU 0.50
    (``iou50``), 0.75 (``iou75``) and its mean over 0.50:0.95 (``iou50_95``), area all, 100 dets.
    """
    truth = gt if isinstance(gt, GroundTruth) else GroundTruth(gt)
    dets = Detections.of(detections)
    ids = None if image_ids is None else list(image_ids)
    coco = coco_evaluate(truth, dets, ids)
    voc = voc_map(truth, dets, 0.5, ids)
    precision = coco["precision"][:, :, :, 0, -1]  # (T, R, K)
    t50, t75 = int(np.where(IOU_THRESHOLDS == 0.5)[0][0]), int(np.where(IOU_THRESHOLDS == 0.75)[0][0])
    per_class, curves = [], {}
    for k, cid in enumerate(coco["params"]["category_ids"]):
        row = coco["per_class"][cid]
        per_class.append({"category_id": cid, "name": row["name"], "num_gt": row["num_gt"], "AP": row["AP"],
                          "AP50": row["AP50"], "AP75": row["AP75"], "voc_AP50": voc["per_class"][cid]})
        if row["AP"] is not None:
            curves[str(cid)] = {"name": row["name"], "iou50": _curve(precision[t50, :, k]),
                                "iou75": _curve(precision[t75, :, k]),
                                "iou50_95": _curve(precision[:, :, k].mean(0))}
    return {"coco": coco["stats_by_name"], "coco_stats": coco["stats"], "voc_map50": voc["map"],
            "per_class": per_class, "num_images": len(coco["params"]["image_ids"]), "num_detections": len(dets),
            "pr_curves": {"recall": RECALL_THRESHOLDS.round(2).tolist(), "classes": curves}}
