"""VOC all-point mAP (the course's ALFA semantics)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from camloc.evaluation.inputs import Detections, EvaluationError, GroundTruth


def _voc_iou_pairs(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """VOC IoU with the +1 pixel convention on corners ``x2 = x + w − 1`` (so a [x, y, w, h] box
    covers w × h pixels, as in the VOC devkit and ALFA's ``map_computation.py``)."""
    dx1, dy1, dx2, dy2 = det[:, 0], det[:, 1], det[:, 0] + det[:, 2] - 1, det[:, 1] + det[:, 3] - 1
    gx1, gy1, gx2, gy2 = gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2] - 1, gt[:, 1] + gt[:, 3] - 1
    iw = np.maximum(np.minimum(gx2, dx2) - np.maximum(gx1, dx1) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gy2, dy2) - np.maximum(gy1, dy1) + 1.0, 0.0)
    inter = iw * ih
    union = (dx2 - dx1 + 1.0) * (dy2 - dy1 + 1.0) + (gx2 - gx1 + 1.0) * (gy2 - gy1 + 1.0) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: ``Σ (r_{i+1} − r_i) · p̂_{i+1}`` with ``p̂`` the precision envelope
    (running max from the right) and sentinels ``r = 0 … 1``, ``p = 0 … 0``."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def voc_map(gt: str | Path | dict | GroundTruth, detections: Detections | str | Path | Sequence[dict],
            iou_threshold: float = 0.5, image_ids: Iterable[int] | None = None,
            classes_without_gt: str = "skip") -> dict[str, Any]:
    """VOC-style mAP: per class, all-point interpolated AP at ``IoU > iou_threshold``, then the mean.

    Semantics of the course's reference (ALFA ``map_computation.py``), minus its crash on
    NumPy ≥ 1.24 (``np.bool``): detections of a class sorted by score (stable here; ALFA's
    quicksort leaves ties in arbitrary order); each takes the ground truth of highest IoU in its
    image (the first on ties) — a true positive if IoU > threshold and that ground truth is not
    yet detected, a false positive if it is, nothing if it is "difficult" (COCO crowd boxes
    play that role); ``recall = TP / #non-difficult``, ``precision = TP / (TP + FP)``.
    ``classes_without_gt``: "skip" leaves classes with no ground truth out of the mean;
    "zero" counts them as AP 0, as ALFA does. ``iou_threshold`` must be in [0, 1); ``image_ids``
    and the detections' images must be images of ``gt`` (an :class:`EvaluationError` otherwise).

    Where this differs from COCO's AP50 (and why the numbers differ):
    IoU must *exceed* 0.5 (COCO: ≥ 0.5); a detection whose best ground truth is taken is a false
    positive instead of falling back to the next best; the area under the whole interpolated
    curve is used instead of 101 sampled recall points; there is no 100-per-image cap; no area
    ranges; and the mean over classes counts each class's AP with the boxes' +1 pixel IoU.
    """
    if not isinstance(classes_without_gt, str) or classes_without_gt not in ("skip", "zero"):
        raise EvaluationError(f"classes_without_gt must be 'skip' or 'zero', got {classes_without_gt!r}")
    if (isinstance(iou_threshold, (bool, np.bool_)) or not isinstance(iou_threshold, (int, float, np.number))
            or not 0 <= iou_threshold < 1):
        raise EvaluationError(f"iou_threshold must be a number in [0, 1), got {iou_threshold!r}")
    truth = gt if isinstance(gt, GroundTruth) else GroundTruth(gt)
    dets = Detections.of(detections)
    truth.check_detections(dets)
    img_ids = truth.select_images(image_ids)
    return voc_result(truth, img_ids, match_voc(truth, dets, img_ids, iou_threshold), iou_threshold,
                      classes_without_gt)


@dataclass(frozen=True)
class VocMatches:
    """Each detection of the evaluated classes, in input order: its image (index in the evaluated ids), category id,
    score, and whether it is a true positive or a false positive (a detection on a "difficult" — crowd — ground
    truth is neither)."""

    image: np.ndarray  # (D,) int64
    category: np.ndarray  # (D,) int64
    score: np.ndarray  # (D,) float64
    tp: np.ndarray  # (D,) float64, 0 or 1
    fp: np.ndarray  # (D,) float64, 0 or 1

    def rows(self, keep: np.ndarray) -> VocMatches:
        """The matches of the detections ``keep`` (a mask or positions)."""
        return VocMatches(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: Sequence[VocMatches]) -> VocMatches:
        """The matches of disjoint image sets as one: a single part as it is (ties ranked in its input order), several
        in the images' order, each image's detections in their part's order — so the parts' order does not matter."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        joined = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        order = np.argsort(joined["image"], kind="stable")
        return cls(**{name: values[order] for name, values in joined.items()})


def match_voc(truth: GroundTruth, dets: Detections, img_ids: np.ndarray, iou_threshold: float = 0.5,
              part: np.ndarray | None = None) -> VocMatches:
    """:class:`VocMatches` of the detections on the images ``part`` (default: all of ``img_ids``): each detection
    takes the ground truth of highest IoU in its image (the first on ties); among the detections of an image
    hitting the same ground truth only the best scored (the first on ties) is a true positive."""
    images = img_ids if part is None else part
    g_keep = np.isin(truth.ann_image, images)
    d_keep = np.isin(dets.image, images) & np.isin(dets.category, truth.category_ids)
    d_all = np.flatnonzero(d_keep)
    tp_all, fp_all = np.zeros(len(dets)), np.zeros(len(dets))
    d_image, d_category, d_bbox, d_score = dets.image, dets.category, dets.bbox, dets.score
    for cid in np.unique(d_category[d_all]).tolist():
        g_sel = np.flatnonzero(g_keep & (truth.ann_category == cid))
        d_sel = np.flatnonzero(d_keep & (d_category == cid))
        d_sel = d_sel[np.argsort(-d_score[d_sel], kind="mergesort")]
        # every (detection, gt of its image) pair, detection-major, gt in file order
        g_sel = g_sel[np.lexsort((g_sel, truth.ann_image[g_sel]))]
        g_img = truth.ann_image[g_sel]
        first = np.searchsorted(g_img, d_image[d_sel], side="left")
        count = np.searchsorted(g_img, d_image[d_sel], side="right") - first
        pair_det = np.repeat(np.arange(len(d_sel)), count)
        pair_gt = np.repeat(first, count) + np.arange(len(pair_det)) - np.repeat(np.cumsum(count) - count, count)
        overlap = _voc_iou_pairs(d_bbox[d_sel][pair_det], truth.ann_bbox[g_sel][pair_gt])
        best_iou = np.full(len(d_sel), -np.inf)
        best_gt = np.full(len(d_sel), -1)
        if len(pair_det):
            starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
            owners = pair_det[starts]
            best_iou[owners] = np.maximum.reduceat(overlap, starts)
            is_best = overlap == best_iou[pair_det]
            first_best = np.minimum.reduceat(np.where(is_best, np.arange(len(pair_det)), len(pair_det)), starts)
            best_gt[owners] = pair_gt[first_best]
        hit = best_iou > iou_threshold
        difficult = np.zeros(len(d_sel), dtype=bool)  # a hit needs IoU > threshold >= 0, so a real pair
        difficult[hit] = truth.ann_crowd[g_sel][best_gt[hit]]
        claims = np.flatnonzero(hit & ~difficult)
        # among detections hitting the same ground truth, only the first (highest score) is a TP
        first_claim = claims[np.unique(best_gt[claims], return_index=True)[1]]
        tp = np.zeros(len(d_sel))
        tp[first_claim] = 1.0
        tp_all[d_sel] = tp
        fp_all[d_sel] = (~hit | (hit & ~difficult)).astype(float) - tp
    return VocMatches(np.searchsorted(img_ids, d_image[d_all]), d_category[d_all], d_score[d_all], tp_all[d_all],
                      fp_all[d_all])


def voc_result(truth: GroundTruth, img_ids: np.ndarray, matches: VocMatches, iou_threshold: float = 0.5,
               classes_without_gt: str = "skip") -> dict[str, Any]:
    """Per class, detections of every image sorted by score (stable: input order on ties), the running TP and FP
    counts, all-point AP; then the mean (:func:`voc_map`'s result)."""
    per_class: dict[int, float | None] = {}
    g_keep = np.isin(truth.ann_image, img_ids)
    for cid in truth.category_ids.tolist():
        npos = int((~truth.ann_crowd[g_keep & (truth.ann_category == cid)]).sum())
        if npos == 0 and classes_without_gt == "skip":
            per_class[cid] = None
            continue
        d_sel = np.flatnonzero(matches.category == cid)
        d_sel = d_sel[np.argsort(-matches.score[d_sel], kind="mergesort")]
        tp, fp = np.cumsum(matches.tp[d_sel]), np.cumsum(matches.fp[d_sel])
        recall = tp / np.maximum(float(npos), np.finfo(np.float64).eps)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[cid] = voc_average_precision(recall, precision)
    valid = [ap for ap in per_class.values() if ap is not None]
    return {"map": float(np.mean(valid)) if valid else None, "per_class": per_class,
            "iou_threshold": iou_threshold, "num_classes": len(valid)}
