"""Box proposals from normalised class maps, and how much of a class's evidence each box holds.

The steps the box recipes (:mod:`camloc.boxes`) are made of, each for many maps at once:

* :func:`level_boxes` — the bounding box of every outer contour of ``u8 ≥ ⌈t·255⌉`` for several
  levels ``t`` of every map (one ``cv2.findContours`` call on a stack of all the masks);
* :func:`instance_labels` — instances inside one map: local maxima as seeds, regions grown from
  them by a watershed of ``−m`` down to a floor (Peak Response Maps, Zhou et al. CVPR 2018),
  and :func:`instance_cut`, the borders between them;
* :func:`box_evidence` — for a box ``B`` of map ``m`` (``m ≥ 0``, total heat ``T = Σ m``):
  ``S = Σ_B m``, ``share = S / T`` (the part of the class's evidence inside the box) and
  ``soft IoU = S / (|B| + T − S)`` (the IoU of the box with the map read as a soft mask);
  ``evidence = √(share · soft IoU)``: high only for a box that holds most of the heat *and*
  little else — a 3-pixel stray contour has almost no share, the whole image has a poor soft IoU;
* :func:`per_class_nms` — greedy NMS within each class (``torchvision.ops.batched_nms``).

Boxes are integer ``[x, y, w, h]`` in the maps' pixel grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from skimage.feature import peak_local_max
from skimage.segmentation import watershed
from torch import Tensor
from torchvision.ops import batched_nms

from camloc.boxes.contours import fraction_cut, stacked_masks, trace_stacked

#: Longer side (pixels) at which :func:`instance_cut` runs its watershed.
INSTANCE_SIDE = 160


def level_boxes(u8: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outer-contour boxes of ``u8[k] ≥ ⌈t·255⌉`` for every map ``k`` of ``u8 (K, H, W)`` and level ``t``.

    Returns ``(map index (n,), level index (n,), xywh (n, 4))``, int64, ordered by map, then level,
    then OpenCV's contour order. A level above a map's maximum gives no box.
    """
    num, height, width = u8.shape
    cut = [fraction_cut(t) for t in levels]
    stack = stacked_masks(num * len(cut), height, width).reshape(num, len(cut), height + 1, width)
    for k in range(num):
        for j, level in enumerate(cut):
            cv2.threshold(u8[k], level, 1, cv2.THRESH_BINARY, dst=stack[k, j, :height])
    tile, rects, _ = trace_stacked(stack.reshape(-1, height + 1, width))
    return tile // len(cut), tile % len(cut), rects


def instance_labels(heat: np.ndarray, floor: float, min_peak: float, min_distance: float) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 of one map ``heat`` in [0, 1] (0 = none).

    Seeds: local maxima of at least ``min_peak``, ``min_distance`` pixels apart; each pixel with
    ``heat ≥ floor`` joins the seed it drains to in a watershed of ``−heat``. Two touching blobs
    with separate peaks get two labels; a region with no seed gets none.
    """
    peaks = peak_local_max(heat, min_distance=max(1, int(min_distance)), threshold_abs=min_peak,
                           exclude_border=False)
    markers = np.zeros(heat.shape, np.int32)
    if len(peaks) == 0:
        return markers
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-heat, markers, mask=heat >= floor).astype(np.int32)


def instance_cut(heat: np.ndarray, floor: float, min_peak: float, grid: tuple[int, int],
                 side: int = INSTANCE_SIDE) -> np.ndarray:
    """``(H, W)`` uint8: 0 on the borders between the instances of a map ``heat (H, W)``, 1 elsewhere.

    Instances are the watershed basins of :func:`instance_labels` over ``heat ≥ floor``, seeded
    at peaks at least half a feature cell apart (``grid`` = the raw map's ``(h, w)``). Multiplying
    a map by the cut splits every region that holds several peaks along the saddle between them,
    so its contours give one box per instance. The watershed runs with the longer side at
    ``side`` pixels (the map is a smooth upsampling of a coarse grid); the labels are carried
    back to full resolution and the cut is drawn there, one pixel wide.
    """
    height, width = heat.shape
    scale = min(1.0, side / max(height, width))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    coarse = cv2.resize(heat, small, interpolation=cv2.INTER_AREA) if scale < 1 else heat
    labels = instance_labels(coarse, floor, min_peak, 0.5 * min(small[1] / grid[0], small[0] / grid[1]))
    if labels.shape != heat.shape:
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    cut = np.ones((height, width), np.uint8)
    right = (labels[:, :-1] != labels[:, 1:]) & (labels[:, :-1] > 0) & (labels[:, 1:] > 0)
    below = (labels[:-1] != labels[1:]) & (labels[:-1] > 0) & (labels[1:] > 0)
    cut[:, :-1][right] = 0
    cut[:-1][below] = 0
    return cut


def integral_images(maps: np.ndarray) -> np.ndarray:
    """Summed-area tables ``(K, H+1, W+1)`` (float64) of maps ``(K, H, W)``: ``I[y, x] = Σ m[:y, :x]``."""
    maps = np.asarray(maps, dtype=np.float32)
    return np.stack([cv2.integral(m, sdepth=cv2.CV_64F) for m in maps]) if len(maps) else \
        np.zeros((0, maps.shape[1] + 1, maps.shape[2] + 1))


def box_sums(tables: np.ndarray, owner: np.ndarray, xywh: np.ndarray) -> np.ndarray:
    """``Σ m[owner]`` over each box ``[x, y, w, h]``, from the summed-area ``tables``."""
    x, y, w, h = np.asarray(xywh, dtype=np.int64).T
    return (tables[owner, y + h, x + w] - tables[owner, y, x + w]) - (tables[owner, y + h, x] - tables[owner, y, x])


def box_evidence(tables: np.ndarray, owner: np.ndarray, xywh: np.ndarray) -> np.ndarray:
    """``√(share · soft IoU)`` of each box (see the module docstring); 0 for a map with no heat."""
    return evidence(box_sums(tables, owner, xywh), tables[owner, -1, -1], xywh)


def evidence(inside: np.ndarray, total: np.ndarray, xywh: np.ndarray) -> np.ndarray:
    """``√(share · soft IoU)`` from each box's heat sum ``inside`` and its map's ``total`` heat (numpy in and
    out; :func:`evidence_of` does the arithmetic)."""
    return evidence_of(*(torch.from_numpy(np.asarray(a, np.float64)) for a in (inside, total, xywh))).numpy()


def evidence_of(inside: Tensor, total: Tensor, xywh: Tensor) -> Tensor:
    """``√(share · soft IoU)`` in float64 on the inputs' device: ``share = S / T``, ``soft IoU = S / (|B| + T −
    S)`` with ``S`` = ``inside`` (clamped at 0), ``T`` = ``total``, ``|B| = w·h``; 0 where ``T = 0``."""
    inside = inside.double().clamp(min=0.0)
    total = total.double()
    area = (xywh[:, 2] * xywh[:, 3]).double()
    has_heat = total > 0
    share = torch.where(has_heat, inside / torch.where(has_heat, total, 1.0), 0.0)
    union = area + total - inside
    soft_iou = torch.where(has_heat, inside / torch.where(has_heat, union, 1.0), 0.0)
    return torch.sqrt(share.clamp(0.0, 1.0) * soft_iou.clamp(0.0, 1.0))


def per_class_nms(owner: np.ndarray, xywh: np.ndarray, score: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS at ``iou`` within each ``owner`` (highest score first)."""
    if len(owner) == 0:
        return np.zeros(0, np.int64)
    corners = torch.from_numpy(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).astype(np.float64))
    kept = batched_nms(corners, torch.from_numpy(np.asarray(score, np.float64)), torch.from_numpy(owner), iou)
    return kept.numpy()

