"""COCO's per-image matching (pycocotools' ``evaluateImg``), for any set of images at once — the part of the
evaluation that is independent per (image, category) and so can run as each batch of a long run finishes.

:func:`match_coco` gives, for the detections of some images (the top 100 of each (image, category) by score),
whether each one matches a ground truth and whether it is ignored, per area range and IoU threshold;
:meth:`CocoMatches.concatenate` joins the matches of disjoint image sets into exactly the arrays one call on all
of them would give. :mod:`camloc.evaluation.coco` accumulates them (see its docstring for the protocol).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

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



def area_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``(A, 1)`` of the area ranges."""
    return np.array([r[0] for r in AREA_RANGES])[:, None], np.array([r[1] for r in AREA_RANGES])[:, None]


def truth_of(truth: GroundTruth, img_ids: np.ndarray, part: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth of the images ``part`` (default: all of ``img_ids``) and the evaluated categories, grouped by
    (image, category), file order within a group: ``(group, bbox, crowd, id, ignore (A, G))``, a group being
    ``image index in img_ids × K + category index``."""
    cat_ids = truth.category_ids
    keep = np.isin(truth.ann_image, img_ids if part is None else part) & np.isin(truth.ann_category, cat_ids)
    g_img = np.searchsorted(img_ids, truth.ann_image[keep])
    g_cat = np.searchsorted(cat_ids, truth.ann_category[keep])
    g_order = np.lexsort((np.arange(len(g_img)), g_cat, g_img))
    g_group = (g_img * len(cat_ids) + g_cat)[g_order]
    g_bbox, g_crowd = truth.ann_bbox[keep][g_order], truth.ann_crowd[keep][g_order]
    g_area, g_id = truth.ann_area[keep][g_order], truth.ann_id[keep][g_order]
    low, high = area_bounds()
    g_ignore = g_crowd[None, :] | (g_area[None, :] < low) | (g_area[None, :] > high)  # (A, G)
    return g_group, g_bbox, g_crowd, g_id, g_ignore


@dataclass(frozen=True)
class CocoMatches:
    """Matched detections, sorted by (image, category, −score, input order), the top 100 of each group kept.

    ``group`` = image index × K + category index; ``matched``/``ignored`` ``(A, T, D)``: per area range and IoU
    threshold, whether the detection matched a ground truth (that is not id 0, as pycocotools reads it) and
    whether it is ignored."""

    group: np.ndarray  # (D,) int64
    category: np.ndarray  # (D,) int64 category index
    score: np.ndarray  # (D,) float64
    rank: np.ndarray  # (D,) int64 rank within its group
    matched: np.ndarray  # (A, T, D) bool
    ignored: np.ndarray  # (A, T, D) bool

    def __len__(self) -> int:
        return len(self.group)

    def rows(self, keep: np.ndarray) -> CocoMatches:
        """The matches of the detections ``keep`` (a mask or positions)."""
        return CocoMatches(**{f.name: getattr(self, f.name)[..., keep] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: Sequence[CocoMatches]) -> CocoMatches:
        """The matches of disjoint image sets as one: the arrays :func:`match_coco` gives for all of them."""
        if not parts:
            return cls(*(np.zeros(0, np.int64),) * 2, np.zeros(0), np.zeros(0, np.int64),
                       *(np.zeros((len(AREA_RANGES), len(IOU_THRESHOLDS), 0), bool),) * 2)
        joined = {f.name: np.concatenate([getattr(p, f.name) for p in parts], axis=-1) for f in fields(cls)}
        order = np.argsort(joined["group"], kind="stable")  # a group lies in one part, in its order
        return cls(**{name: values[..., order] for name, values in joined.items()})


def match_coco(truth: GroundTruth, dets: Detections, img_ids: np.ndarray, part: np.ndarray | None = None
               ) -> CocoMatches:
    """:class:`CocoMatches` of the detections on the images ``part`` (default: every image of ``img_ids``, the
    sorted ids of the evaluated images; detections on other images are left out)."""
    cat_ids = truth.category_ids
    num_cat = len(cat_ids)
    g_group, g_bbox, g_crowd, g_id, g_ignore = truth_of(truth, img_ids, part)

    # Detections of the images and categories, by (image, category, −score, input order).
    keep = np.isin(dets.image, img_ids if part is None else part) & np.isin(dets.category, cat_ids)
    index = np.flatnonzero(keep)
    d_img = np.searchsorted(img_ids, dets.image[keep])
    d_cat = np.searchsorted(cat_ids, dets.category[keep])
    order = np.lexsort((index, -dets.score[keep], d_cat, d_img))
    d_group = (d_img * num_cat + d_cat)[order]
    d_bbox, d_score_s, d_cat_s = dets.bbox[keep][order], dets.score[keep][order], d_cat[order]
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
    low, high = area_bounds()
    d_area = d_bbox[:, 2] * d_bbox[:, 3]
    outside = (d_area[None, :] < low) | (d_area[None, :] > high)  # (A, D)
    matched_ignored = np.take_along_axis(g_ignore[:, None, :], safe, 2) if len(g_id) else has_gt
    d_ignore = (has_gt & matched_ignored) | (~matched & outside[:, None, :])
    return CocoMatches(d_group, d_cat_s, d_score_s, rank, matched, d_ignore)
