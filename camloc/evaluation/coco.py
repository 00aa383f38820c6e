"""Detection metrics: the COCO bbox protocol (equal to pycocotools to the last bit), and VOC mAP.

:func:`coco_evaluate` follows pycocotools' ``COCOeval`` (evaluate → accumulate → summarize)
operation for operation in float64, so the 12 summary numbers are *identical* (``==``), but
with no Python loop over detections: matching runs rank by rank across every (image, category,
area range, IoU threshold) at once, and accumulation is one sort per category.

The protocol, as pycocotools implements it:

* IoU of a detection ``d`` and a ground truth ``g`` (boxes ``[x, y, w, h]``):
  ``I / U`` with ``U = area(d) + area(g) − I``, or ``U = area(d)`` when ``g`` is a crowd.
* Per (image, category): detections sorted by score (stable), the top ``maxDets[-1]`` kept.
  For each IoU threshold ``t`` and area range, greedily in score order, a detection takes the
  available ground truth with the highest IoU ≥ ``t`` (ties: the later one), preferring those
  not ignored; crowds stay available. A ground truth is ignored if it is a crowd or its stored
  ``area`` is outside the range; an unmatched detection outside the range is ignored too.
* Per category: all images' detections (the first ``maxDet`` of each image) stable-sorted by
  score; ``recall = TP / #non-ignored GT``, ``precision = TP / (TP + FP + ε)`` made
  monotone from the right, sampled at 101 recall points (``searchsorted(side="left")``).
* The 12 stats average the sampled precision (or final recall) over the entries that are
  not −1 (categories with no ground truth are −1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camloc.evaluation.coco_match import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoMatches,
    match_coco,
    truth_of,
)
from camloc.evaluation.inputs import Detections, GroundTruth


def _summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 12 COCO numbers, exactly as ``COCOeval.summarize`` averages them."""

    def one(ap: bool, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        aind = [i for i, label in enumerate(AREA_LABELS) if label == area]
        mind = [i for i, m in enumerate(MAX_DETS) if m == max_dets]
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    return [one(True), one(True, 0.5), one(True, 0.75), one(True, area="small"), one(True, area="medium"),
            one(True, area="large"), one(False, max_dets=1), one(False, max_dets=10), one(False),
            one(False, area="small"), one(False, area="medium"), one(False, area="large")]


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else None


def coco_evaluate(gt: str | Path | dict | GroundTruth, detections: Detections | str | Path | Sequence[dict],
                  image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """COCO bbox evaluation equal to pycocotools ``COCOeval(gt, gt.loadRes(dets), "bbox")``.

    ``gt``: an instances JSON (path or dict); ``detections``: COCO results (path or list).
    ``image_ids`` restricts the evaluation to those images (as ``params.imgIds``).
    Returns ``stats`` (the 12 numbers in pycocotools' order), ``stats_by_name``, ``per_class``
    (AP, AP50, AP75 per category id; None without ground truth), and the accumulated arrays
    ``precision (T,R,K,A,M)``, ``recall (T,K,A,M)``, ``scores (T,R,K,A,M)`` with ``params``.

    An empty detection list is valid (every AP is 0). Detections on images the annotation file
    does not list are an error (as in pycocotools); those of categories it does not list are
    left out. NaN or infinite scores/boxes are an error. Boxes with zero or negative size are
    kept and never match, as in pycocotools.
    """
    truth = gt if isinstance(gt, GroundTruth) else GroundTruth(gt)
    dets = Detections.of(detections)
    truth.check_detections(dets)
    img_ids = truth.select_images(image_ids)
    return coco_result(truth, img_ids, match_coco(truth, dets, img_ids))


def coco_result(truth: GroundTruth, img_ids: np.ndarray, matches: CocoMatches) -> dict[str, Any]:
    """Accumulate and summarize the matches of every image of ``img_ids`` (:func:`coco_evaluate`'s result)."""
    cat_ids = truth.category_ids
    num_cat = len(cat_ids)
    thresholds, recalls, areas, max_dets = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
    g_group, _, _, _, g_ignore = truth_of(truth, img_ids)
    num_det = len(matches)
    d_cat_s, d_score_s, rank, matched, d_ignore = (matches.category, matches.score, matches.rank, matches.matched,
                                                   matches.ignored)

    # Accumulate: per category, detections stable-sorted by score across images.
    precision = -np.ones((thresholds, recalls, num_cat, areas, max_dets))
    recall = -np.ones((thresholds, num_cat, areas, max_dets))
    scores = -np.ones((thresholds, recalls, num_cat, areas, max_dets))
    by_cat = np.lexsort((np.arange(num_det), -d_score_s, d_cat_s))
    cat_bounds = np.searchsorted(d_cat_s[by_cat], np.arange(num_cat + 1))
    g_cat_sorted = (g_group % num_cat) if len(g_group) else g_group
    npig = np.stack([np.bincount(g_cat_sorted[~g_ignore[a]], minlength=num_cat) for a in range(areas)], 1)
    rows = areas * thresholds  # every (area range, IoU threshold) of a category at once: (A·T, n) arrays
    row_offsets = np.arange(rows)[:, None] * (recalls + 1)
    counted = ~d_ignore  # (A, T, D)
    for k in np.flatnonzero(npig[:, 0]):  # a category with no non-ignored ground truth stays −1
        members = by_cat[cat_bounds[k]:cat_bounds[k + 1]]
        live = npig[k] > 0  # area ranges without non-ignored ground truth stay −1
        for m, max_det in enumerate(MAX_DETS):
            dets = members[rank[members] < max_det]
            n = len(dets)
            if n == 0:
                recall[:, k, live, m] = 0
                precision[:, :, k, live, m] = 0
                scores[:, :, k, live, m] = 0
                continue
            sorted_scores = d_score_s[dets]
            hit, kept = matched[:, :, dets], counted[:, :, dets]
            tp = np.cumsum(hit & kept, axis=2).astype(dtype=float)
            fp = np.cumsum(~hit & kept, axis=2).astype(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):  # the −1 area ranges divide by 0; overwritten
                rc = tp / npig[k][:, None, None]
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, :, ::-1], axis=2)[:, :, ::-1].reshape(rows, n)
            rc = rc.reshape(rows, n)
            # first i with rc[i] >= r  <=>  first i with (#thresholds <= rc[i]) > index of r
            covered = np.searchsorted(RECALL_THRESHOLDS, np.where(np.isfinite(rc), rc, 0), side="right") + row_offsets
            pos = np.searchsorted(covered.ravel(), (row_offsets + np.arange(recalls)).ravel(), side="right")
            pos = pos.reshape(rows, recalls) - np.arange(rows)[:, None] * n
            reached = pos < n
            clipped = np.minimum(pos, n - 1)
            sampled = np.where(reached, np.take_along_axis(pr, clipped, 1), 0).reshape(areas, thresholds, recalls)
            picked = np.where(reached, sorted_scores[clipped], 0).reshape(areas, thresholds, recalls)
            recall[:, k, live, m] = rc.reshape(areas, thresholds, n)[live, :, -1].T
            precision[:, :, k, live, m] = sampled[live].transpose(1, 2, 0)
            scores[:, :, k, live, m] = picked[live].transpose(1, 2, 0)

    stats = _summarize(precision, recall)
    t50, t75 = np.where(IOU_THRESHOLDS == 0.5)[0], np.where(IOU_THRESHOLDS == 0.75)[0]
    per_class = {}
    for k, cid in enumerate(cat_ids.tolist()):
        p = precision[:, :, k, 0, -1]
        per_class[cid] = {"name": truth.category_names[cid], "AP": _mean_valid(p), "AP50": _mean_valid(p[t50]),
                          "AP75": _mean_valid(p[t75]), "num_gt": int(npig[k, 0])}
    return {"stats": stats, "stats_by_name": dict(zip(STAT_NAMES, stats)), "per_class": per_class,
            "precision": precision, "recall": recall, "scores": scores,
            "params": {"image_ids": img_ids.tolist(), "category_ids": cat_ids.tolist(),
                       "iou_thresholds": IOU_THRESHOLDS.tolist(), "recall_thresholds": RECALL_THRESHOLDS.tolist(),
                       "max_dets": list(MAX_DETS), "area_ranges": [list(r) for r in AREA_RANGES]}}
