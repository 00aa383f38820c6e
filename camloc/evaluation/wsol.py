"""The WSOL literature's box metrics (wsolevaluation, Choe et al. CVPR 2020), adapted to COCO.

wsolevaluation scores the *maps*, not a detector's boxes: every map is resized to 224×224 and
min-max normalised, ``u8 = uint8(255·m)``, and for each CAM threshold ``τ ∈ {0, 0.01, …, 0.99}``
the foreground is ``u8 > int(τ · max u8)``; *every* contour of it (``cv2.RETR_TREE``) gives a box
``[x, y, min(x+w, 223), min(y+h, 223)]`` (none: ``[0, 0, 0, 0]``). A map is correct at ``(τ, δ)``
when one of those boxes has IoU ≥ δ/100 with one of its ground-truth boxes (IoU with the +1 pixel
convention; ground truth resized to 224×224 and truncated to integers, as ``resize_bbox``).

* ``BoxAcc(τ, δ)`` = the fraction of correct maps; ``MaxBoxAcc(δ) = max_τ BoxAcc(τ, δ)``;
  **MaxBoxAccV2** = the mean of ``MaxBoxAcc`` over ``δ ∈ {30, 50, 70}`` (all contours).
* **GT-known Loc** = ``MaxBoxAcc(50)``: the map of the true class, at the best threshold ``τ*``.
* **Top-1 Loc** = the fraction of maps that are correct at ``(τ*, 50)`` *and* whose class is
  correctly recognised.

The COCO adaptation (images have several classes and several objects): one map per (image,
class present in the image), i.e. per image and non-crowd ground-truth class; its ground truth
is every non-crowd box of that class in the image, and a box counts when it matches *any* of
them. "Correctly recognised" (Top-1 Loc) means the class is among the image's ``n`` most
probable classes, ``n`` = the number of classes present in the image (top-1 when there is one).
All numbers are fractions in [0, 1] (wsolevaluation prints percentages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from camloc.cam import normalize_maps
from camloc.cam.frame import MapFrame

CAM_THRESHOLDS = np.arange(0, 1, 0.01)
IOU_DELTAS = (30, 50, 70)
RESIZE = 224


def multiple_iou(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU ``(n, m)`` of ``x0y0x1y1`` integer boxes, inclusive corners (+1 pixel), as wsolevaluation."""
    a, b = boxes[:, None, :].astype(np.float64), truth[None, :, :].astype(np.float64)
    inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
             * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1))
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def resize_boxes(xywh: np.ndarray, size: tuple[int, int], resize: int = RESIZE) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes of an ``(H, W)`` image → ``x0y0x1y1`` at ``resize × resize``,
    truncated to integers (wsolevaluation's ``resize_bbox``)."""
    height, width = size
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    return np.trunc(corners * np.array([resize / width, resize / height] * 2)).astype(np.int64)


def threshold_boxes(scoremap: np.ndarray, thresholds: np.ndarray = CAM_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """All-contour boxes of a ``(R, R)`` map in [0, 1] at every threshold (one ``findContours``
    call on the stacked masks). Returns ``(threshold index (n,), boxes x0y0x1y1 (n, 4))``; a
    threshold with no foreground gives the box ``[0, 0, 0, 0]``. Rows are in threshold order."""
    u8 = (np.asarray(scoremap, np.float32) * np.float32(255)).astype(np.uint8)
    height, width = u8.shape
    stride = height + 1
    stack = np.zeros((len(thresholds), stride, width), np.uint8)
    top = int(u8.max())
    for i, tau in enumerate(thresholds):
        cv2.threshold(u8, int(tau * top), 1, cv2.THRESH_BINARY, dst=stack[i, :height])
    # RETR_LIST finds the same contours as wsolevaluation's RETR_TREE (outer and hole borders), without the tree
    contours, _ = cv2.findContours(stack.reshape(-1, width), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    tile = rects[:, 1] // stride
    x, y = rects[:, 0], rects[:, 1] - tile * stride
    boxes = np.stack([x, y, np.minimum(x + rects[:, 2], width - 1), np.minimum(y + rects[:, 3], height - 1)], 1)
    empty = np.setdiff1d(np.arange(len(thresholds)), tile)
    owner = np.concatenate([tile, empty])
    boxes = np.concatenate([boxes, np.zeros((len(empty), 4), np.int64)])
    order = np.argsort(owner, kind="stable")
    return owner[order], boxes[order]


def map_hits(scoremap: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = CAM_THRESHOLDS,
             deltas: Sequence[int] = IOU_DELTAS) -> np.ndarray:
    """Boolean ``(len(deltas), len(thresholds))``: is the map correct at ``(τ, δ)``? ``truth`` holds
    the map's ground-truth boxes, ``x0y0x1y1`` at the map's resolution."""
    owner, boxes = threshold_boxes(scoremap, thresholds)
    best = np.zeros(len(thresholds))
    if len(truth):
        np.maximum.at(best, owner, multiple_iou(boxes, np.asarray(truth)).max(1))
    return best[None, :] >= np.asarray(deltas, dtype=np.float64)[:, None] / 100


def image_hits(raw_maps: torch.Tensor, truth_xywh: Sequence[np.ndarray], size: tuple[int, int],
               frame: MapFrame | None = None) -> np.ndarray:
    """:func:`map_hits` ``(k, 3, 100)`` for the raw maps ``(k, h, w)`` of an ``(H, W)`` image's
    present classes, with each class's ground-truth ``[x, y, w, h]`` boxes in original pixels; ``frame``: where
    the maps' cells sit in the image (``None``: the grid stretched over it, as wsolevaluation resizes a map)."""
    if len(raw_maps) == 0:
        return np.zeros((0, len(IOU_DELTAS), len(CAM_THRESHOLDS)), bool)
    maps = normalize_maps(raw_maps, (RESIZE, RESIZE), frame).cpu().numpy()
    return np.stack([map_hits(m, resize_boxes(boxes, size)) for m, boxes in zip(maps, truth_xywh)])


@dataclass
class BoxAccuracy:
    """Accumulates :func:`map_hits` of (image, class) maps and whether each class was recognised."""

    hits: list[np.ndarray] = field(default_factory=list)
    recognised: list[bool] = field(default_factory=list)

    def add(self, hits: np.ndarray, recognised: Sequence[bool]) -> None:
        """``hits (k, 3, 100)`` of one image's present classes and their recognition flags ``(k,)``."""
        if len(hits) != len(recognised):
            raise ValueError(f"{len(hits)} maps but {len(recognised)} recognition flags")
        self.hits.extend(np.asarray(hits, dtype=bool))
        self.recognised.extend(bool(r) for r in recognised)

    def result(self) -> dict[str, Any]:
        """``MaxBoxAccV2``, ``MaxBoxAcc`` and best threshold per δ, ``GT-known Loc``, ``Top-1 Loc``,
        ``num_maps`` (None values when no map was added)."""
        if not self.hits:
            return {"MaxBoxAccV2": None, "MaxBoxAcc": {str(d): None for d in IOU_DELTAS}, "best_threshold": None,
                    "GT-known Loc": None, "Top-1 Loc": None, "num_maps": 0}
        hits = np.stack(self.hits)  # (N, D, T)
        accuracy = hits.mean(0)  # (D, T)
        best = accuracy.argmax(1)  # first best threshold, as max() over the list
        per_delta = accuracy[np.arange(len(IOU_DELTAS)), best]
        at50 = IOU_DELTAS.index(50)
        top1 = (hits[:, at50, best[at50]] & np.asarray(self.recognised)).mean()
        return {"MaxBoxAccV2": float(per_delta.mean()),
                "MaxBoxAcc": {str(d): float(a) for d, a in zip(IOU_DELTAS, per_delta)},
                "best_threshold": {str(d): round(float(CAM_THRESHOLDS[b]), 2) for d, b in zip(IOU_DELTAS, best)},
                "GT-known Loc": float(per_delta[at50]), "Top-1 Loc": float(top1), "num_maps": len(hits)}


def recognised_classes(probs: torch.Tensor, present: Sequence[int]) -> list[bool]:
    """For each present class index: is it among the ``len(present)`` most probable classes?"""
    if not len(present):
        return []
    top = set(torch.topk(probs, min(len(present), len(probs))).indices.tolist())
    return [int(k) in top for k in present]
