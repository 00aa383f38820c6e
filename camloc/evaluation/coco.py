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

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camloc.evaluation.inputs import Detections, GroundTruth

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0, 1e5**2), (0, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def box_iou_pairs(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes ``[x, y, w, h]`` (float64, pycocotools' ``bbIou`` order of operations)."""
    w = np.minimum(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(det[:, 0], gt[:, 0])
    h = np.minimum(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(det[:, 1], gt[:, 1])
    inter = w * h
    det_area = det[:, 2] * det[:, 3]
    union = np.where(crowd, det_area, det_area + gt[:, 2] * gt[:, 3] - inter)
    overlap = (w > 0) & (h > 0)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)


def _match(det_rank: np.ndarray, pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray,
           gt_ignore: np.ndarray, gt_crowd: np.ndarray, num_dets: int) -> np.ndarray:
    """Greedy COCO matching for all (area range, IoU threshold) at once.

    Pairs must be sorted by (detection rank, detection, ground-truth order); detections of equal
    rank never share a ground truth, so each rank is one vectorised step. Returns the matched
    ground-truth index per (area, threshold, detection), −1 for none.
    """
    areas, thresholds = gt_ignore.shape[0], len(IOU_THRESHOLDS)
    match = np.full((areas, thresholds, num_dets), -1, dtype=np.int64)
    taken = np.zeros((areas, thresholds, gt_ignore.shape[1]), dtype=bool)
    rank_of_pair = det_rank[pair_det]
    bounds = np.searchsorted(rank_of_pair, np.arange(rank_of_pair.max() + 2 if len(rank_of_pair) else 1))
    thr = IOU_THRESHOLDS[None, :, None]
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        dets, gts, ious = pair_det[lo:hi], pair_gt[lo:hi], pair_iou[lo:hi]
        starts = _segment_starts(dets)
        ignored = gt_ignore[:, gts][:, None, :]  # (A, 1, P)
        candidate = (ious[None, None, :] >= thr) & (~taken[:, :, gts] | gt_crowd[gts])
        regular = candidate & ~ignored
        has_regular = np.logical_or.reduceat(regular, starts, axis=2)
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(dets)]))
        eligible = np.where(has_regular[:, :, seg], regular, candidate & ignored)
        best = np.maximum.reduceat(np.where(eligible, ious, -1.0), starts, axis=2)
        winner_pos = np.where(eligible & (ious == best[:, :, seg]), np.arange(len(dets)), -1)
        winner = np.maximum.reduceat(winner_pos, starts, axis=2)  # last best pair, or −1
        a_idx, t_idx, s_idx = np.nonzero(winner >= 0)
        won = winner[a_idx, t_idx, s_idx]
        match[a_idx, t_idx, dets[starts[s_idx]]] = gts[won]
        taken[a_idx, t_idx, gts[won]] = True
    return match


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
    d_image, d_category, d_bbox, d_score = dets.image, dets.category, dets.bbox, dets.score
    truth.check_detections(dets)
    img_ids = truth.select_images(image_ids)
    cat_ids = truth.category_ids
    num_cat = len(cat_ids)
    thresholds, recalls, areas, max_dets = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)

    # Ground truth of the evaluated images and categories, grouped by (image, category), file order.
    keep = np.isin(truth.ann_image, img_ids) & np.isin(truth.ann_category, cat_ids)
    g_img = np.searchsorted(img_ids, truth.ann_image[keep])
    g_cat = np.searchsorted(cat_ids, truth.ann_category[keep])
    g_order = np.lexsort((np.arange(len(g_img)), g_cat, g_img))
    g_group = (g_img * num_cat + g_cat)[g_order]
    g_bbox, g_crowd = truth.ann_bbox[keep][g_order], truth.ann_crowd[keep][g_order]
    g_area, g_id = truth.ann_area[keep][g_order], truth.ann_id[keep][g_order]
    low = np.array([r[0] for r in AREA_RANGES])[:, None]
    high = np.array([r[1] for r in AREA_RANGES])[:, None]
    g_ignore = g_crowd[None, :] | (g_area[None, :] < low) | (g_area[None, :] > high)  # (A, G)

    # Detections of the evaluated images and categories, by (image, category, −score, input order).
    keep = np.isin(d_image, img_ids) & np.isin(d_category, cat_ids)
    index = np.flatnonzero(keep)
    d_img = np.searchsorted(img_ids, d_image[keep])
    d_cat = np.searchsorted(cat_ids, d_category[keep])
    order = np.lexsort((index, -d_score[keep], d_cat, d_img))
    d_group = (d_img * num_cat + d_cat)[order]
    d_bbox, d_score_s, d_cat_s = d_bbox[keep][order], d_score[keep][order], d_cat[order]
    starts = _segment_starts(d_group)
    rank = np.arange(len(d_group)) - np.repeat(starts, np.diff(np.r_[starts, len(d_group)]))
    top = rank < MAX_DETS[-1]
    d_group, d_bbox, d_score_s, d_cat_s, rank = d_group[top], d_bbox[top], d_score_s[top], d_cat_s[top], rank[top]
    num_det = len(d_group)

    # Every (detection, ground truth) pair of the same group, sorted by (rank, detection, gt order).
    first_gt = np.searchsorted(g_group, d_group, side="left")
    count_gt = np.searchsorted(g_group, d_group, side="right") - first_gt
    pair_det = np.repeat(np.arange(num_det), count_gt)
    pair_gt = np.repeat(first_gt, count_gt) + (np.arange(len(pair_det)) - np.repeat(np.cumsum(count_gt) - count_gt,
                                                                                    count_gt))
    # Within a group, ground truths go non-ignored first (stable) — per area range; the matching
    # only needs "non-ignored preferred, then last best", which is order-independent across classes.
    pair_order = np.lexsort((pair_gt, pair_det, rank[pair_det]))
    pair_det, pair_gt = pair_det[pair_order], pair_gt[pair_order]
    pair_iou = box_iou_pairs(d_bbox[pair_det], g_bbox[pair_gt], g_crowd[pair_gt])
    matched_gt = _match(rank, pair_det, pair_gt, pair_iou, g_ignore, g_crowd, num_det)  # (A, T, D)
    has_gt = matched_gt >= 0
    safe = np.where(has_gt, matched_gt, 0)
    matched = has_gt & (g_id[safe] != 0) if len(g_id) else has_gt  # pycocotools: a match to gt id 0 reads as none
    d_area = d_bbox[:, 2] * d_bbox[:, 3]
    outside = (d_area[None, :] < low) | (d_area[None, :] > high)  # (A, D)
    matched_ignored = np.take_along_axis(g_ignore[:, None, :], safe, 2) if len(g_id) else has_gt
    d_ignore = (has_gt & matched_ignored) | (~matched & outside[:, None, :])

    # Accumulate: per category, detections stable-sorted by score across images.
    precision = -np.ones((thresholds, recalls, num_cat, areas, max_dets))
    recall = -np.ones((thresholds, num_cat, areas, max_dets))
    scores = -np.ones((thresholds, recalls, num_cat, areas, max_dets))
    by_cat = np.lexsort((np.arange(num_det), -d_score_s, d_cat_s))
    cat_bounds = np.searchsorted(d_cat_s[by_cat], np.arange(num_cat + 1))
    g_cat_sorted = (g_group % num_cat) if len(g_group) else g_group
    npig = np.stack([np.bincount(g_cat_sorted[~g_ignore[a]], minlength=num_cat) for a in range(areas)], 1)
    row_offsets = np.arange(thresholds)[:, None] * (recalls + 1)
    for k in np.flatnonzero(npig[:, 0]):  # a category with no non-ignored ground truth stays −1
        members = by_cat[cat_bounds[k]:cat_bounds[k + 1]]
        for m, max_det in enumerate(MAX_DETS):
            dets = members[rank[members] < max_det]
            n = len(dets)
            sorted_scores = d_score_s[dets]
            for a in range(areas):
                if npig[k, a] == 0:
                    continue
                tps = matched[a][:, dets] & ~d_ignore[a][:, dets]
                fps = ~matched[a][:, dets] & ~d_ignore[a][:, dets]
                tp = np.cumsum(tps, axis=1).astype(dtype=float)
                fp = np.cumsum(fps, axis=1).astype(dtype=float)
                rc = tp / npig[k, a]
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if n else 0
                if n == 0:
                    precision[:, :, k, a, m] = 0
                    scores[:, :, k, a, m] = 0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                # first i with rc[i] >= r  <=>  first i with (#thresholds <= rc[i]) > index of r
                covered = np.searchsorted(RECALL_THRESHOLDS, rc, side="right") + row_offsets
                pos = np.searchsorted(covered.ravel(), (row_offsets + np.arange(recalls)).ravel(), side="right")
                pos = pos.reshape(thresholds, recalls) - np.arange(thresholds)[:, None] * n
                reached = pos < n
                clipped = np.minimum(pos, n - 1)
                precision[:, :, k, a, m] = np.where(reached, np.take_along_axis(pr, clipped, 1), 0)
                scores[:, :, k, a, m] = np.where(reached, sorted_scores[clipped], 0)

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
