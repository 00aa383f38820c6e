"""Heatmaps → boxes → scores, for all classes of an image at once.

For each normalised map ``m ∈ [0,1]^{H×W}`` (the classic CAM recipe):

1. ``u8 = uint8(255 · m)`` (truncation, as ``np.uint8``);
2. foreground ``u8 > t`` with ``t`` from Otsu (``cv2.THRESH_OTSU``), or ``u8 ≥ f · 255`` for a
   fixed fraction ``f`` of the maximum;
3. ``cv2.findContours(RETR_EXTERNAL)`` and ``cv2.boundingRect`` of each outer contour
   (``mode="largest"`` keeps the contour of largest ``cv2.contourArea``);
4. ``heat`` = mean of ``m`` inside the box; the detection score is ``heat × p(class)``.

A map with no foreground (all zero, constant) yields the whole image as its box, so every class
gives at least one box. All K maps are binarised at once and traced by a single
``findContours`` call on a stack of the maps separated by empty rows; box means are float64
sums over each box. Boxes are ``[x, y, w, h]`` in the maps' pixel grid (the original image's).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BOX_MODES = ("all", "largest")
#: How far above 1 a normalised map may reach (float rounding); ``uint8(255 · m)`` is still 255.
MAP_SLACK = 1e-6


@dataclass(frozen=True)
class BoxSet:
    """Boxes of several classes: row ``i`` is class ``class_index[i]``, box ``xywh[i]``, ``heat[i]``."""

    class_index: np.ndarray  # (n,) int64, position in the maps' class axis
    xywh: np.ndarray  # (n, 4) int64, [x, y, w, h] in pixels
    heat: np.ndarray  # (n,) float64, mean normalised heat inside the box

    def __len__(self) -> int:
        return len(self.class_index)


def parse_box_mode(mode: str) -> str:
    """One of :data:`BOX_MODES`; anything else is a ``ValueError``."""
    if not isinstance(mode, str) or mode not in BOX_MODES:
        raise ValueError(f"box mode must be one of {BOX_MODES}, got {mode!r}")
    return mode


def fraction_cut(fraction: float) -> float:
    """The level ``c`` with ``u8 > c`` ⟺ ``u8 ≥ ⌈f·255⌉`` for integer ``u8`` (``f·255`` in float32, as the
    classic ``np.uint8(255 * cam)``): ``⌈f·255⌉ − 1``."""
    return float(np.ceil(np.float32(fraction) * np.float32(255)) - 1)


def parse_threshold(threshold: str | float) -> str | float:
    """``"otsu"`` or a fraction in (0, 1]; anything else is a ``ValueError``."""
    if isinstance(threshold, str) and threshold.strip().lower() == "otsu":
        return "otsu"
    if isinstance(threshold, (bool, np.bool_)):
        raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1], got {threshold!r}")
    try:
        fraction = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1], got {threshold!r}") from None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"threshold fraction must be in (0, 1], got {fraction}")
    return fraction


def threshold_levels(threshold: str | float) -> tuple[float, ...] | None:
    """A ``threshold`` option as cut levels: ``None`` for Otsu, else the one fraction."""
    return None if threshold == "otsu" else (float(threshold),)


def to_uint8(maps: np.ndarray) -> np.ndarray:
    """``uint8(255 · m)`` with truncation, as the classic ``np.uint8(255 * cam)``."""
    return (np.asarray(maps, dtype=np.float32) * np.float32(255)).astype(np.uint8)


def foreground(u8: np.ndarray, threshold: str | float = "otsu", out: np.ndarray | None = None) -> np.ndarray:
    """Binary foreground (0/1 uint8) of uint8 maps ``(K,H,W)``: ``u8 > otsu(u8)`` per map, or
    ``u8 ≥ f·255``. ``out`` (``(K,H,W)`` uint8, may be a view) receives the masks in place."""
    threshold = parse_threshold(threshold)
    out = np.empty(u8.shape, np.uint8) if out is None else out
    # u8 ≥ f·255  ⟺  u8 > ⌈f·255⌉ − 1 for integer u8; one OpenCV call per map binarises in place
    level = 0 if threshold == "otsu" else fraction_cut(threshold)
    flags = cv2.THRESH_BINARY | (cv2.THRESH_OTSU if threshold == "otsu" else 0)
    for k in range(len(u8)):
        cv2.threshold(u8[k], level, 1, flags, dst=out[k])
    return out


def _checked_maps(maps: np.ndarray) -> np.ndarray:
    """``maps`` as float32 ``(K, H, W)``; a ``ValueError`` unless they are real numbers in [0, 1]
    (up to :data:`MAP_SLACK` above 1, the rounding of a normalisation, which ``uint8`` maps to 255)."""
    try:
        array = np.asarray(maps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"maps must be an array of numbers in [0, 1] ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"maps must hold real numbers in [0, 1], got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"maps must be (K, H, W) with K, H, W ≥ 1, got shape {array.shape}")
    low, high = array.min(), array.max()  # NaN propagates into both
    if not (low >= 0 and high <= 1 + MAP_SLACK):
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("maps contain NaN or infinite values; normalise finite maps to [0, 1]")
        raise ValueError(f"maps must be normalised to [0, 1], these span [{low:.6g}, {high:.6g}] "
                         "(values above 1 would wrap around in uint8)")
    return array


def heatmaps_to_boxes(maps: np.ndarray, threshold: str | float = "otsu", mode: str = "all") -> BoxSet:
    """Boxes of the normalised maps ``(K, H, W)`` (real numbers in [0, 1]; NaN, inf, values out of
    range, or a non-numeric array are a ``ValueError``); see the module docstring."""
    return normalized_maps_to_boxes(_checked_maps(maps), threshold, parse_box_mode(mode))


def normalized_maps_to_boxes(maps: np.ndarray, threshold: str | float = "otsu", mode: str = "all") -> BoxSet:
    """:func:`heatmaps_to_boxes` without its checks, for float32 maps ``(K, H, W)`` that the caller made
    valid (``normalize_maps`` of finite raw maps): the recipes' hot path, where the checks' two passes
    over every pixel would cost an eighth of the box stage."""
    num, height, width = maps.shape
    stacked = stacked_masks(num, height, width)
    foreground(to_uint8(maps), threshold, out=stacked[:, :height])
    owner, rects = outer_boxes(stacked, mode)
    return BoxSet(owner, rects, box_means(maps, owner, rects))


def stacked_masks(num: int, height: int, width: int) -> np.ndarray:
    """Zeros ``(num, height + 1, width)`` uint8: ``num`` masks stacked vertically with one empty row after
    each (write mask ``i`` into ``[i, :height]``), so that one ``findContours`` call traces them all and no
    contour crosses from one mask into the next."""
    return np.zeros((num, height + 1, width), dtype=np.uint8)


def trace_stacked(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Outer contours (``RETR_EXTERNAL``) of the masks of :func:`stacked_masks`, one OpenCV call:
    ``(mask index (n,), bounding rects [x, y, w, h] (n, 4), contours)``, stably sorted by mask."""
    num, stride, width = stacked.shape
    contours, _ = cv2.findContours(stacked.reshape(num * stride, width), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    owner = rects[:, 1] // stride
    rects[:, 1] -= owner * stride
    order = np.argsort(owner, kind="stable")
    return owner[order], rects[order], tuple(contours[i] for i in order)


def outer_boxes(stacked: np.ndarray, mode: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """The course recipe's boxes of stacked masks: every outer contour's bounding rect (``mode="largest"``:
    the contour of largest ``cv2.contourArea`` per mask, first on ties), the whole image for an empty
    mask; ``(mask index, xywh)`` sorted by mask."""
    num, stride, width = stacked.shape
    height = stride - 1
    owner, rects, contours = trace_stacked(stacked)
    if mode == "largest" and len(rects):
        areas = np.array([cv2.contourArea(c) for c in contours])
        order = np.lexsort((-areas, owner))  # by mask, then largest area first (stable)
        first = np.unique(owner[order], return_index=True)[1]
        keep = np.sort(order[first])
        rects, owner = rects[keep], owner[keep]
    owner, rects = with_whole_image(owner, rects, num, (height, width))
    order = np.argsort(owner, kind="stable")
    return owner[order], rects[order]


def with_whole_image(owner: np.ndarray, xywh: np.ndarray, num: int, size: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The boxes ``(mask index, xywh)`` plus the whole image ``size = (H, W)`` for each of the ``num``
    masks that has none, appended after them."""
    height, width = size
    empty = np.setdiff1d(np.arange(num), owner)
    whole = np.tile([0, 0, width, height], (len(empty), 1))
    return (np.concatenate([owner, empty]).astype(np.int64),
            np.concatenate([np.asarray(xywh).reshape(-1, 4), whole]).astype(np.int64))


def box_means(maps: np.ndarray, class_index: np.ndarray, xywh: np.ndarray) -> np.ndarray:
    """Mean of ``maps[k]`` over each box ``[x, y, w, h]``, accumulated in float64."""
    return np.array([maps[k, y:y + h, x:x + w].mean(dtype=np.float64)
                     for k, (x, y, w, h) in zip(class_index.tolist(), xywh.tolist())])
