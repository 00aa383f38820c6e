"""``seed``: the course recipe, bit for bit — kept forever as the reference every other recipe is compared to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor

from camloc.boxes.contours import BoxSet, normalized_maps_to_boxes, parse_box_mode, parse_threshold, threshold_levels
from camloc.boxes.device import DeviceMaps, heat_sums
from camloc.boxes.device import trace as trace_masks
from camloc.boxes.registry import BOX_CHUNK, Recipe, ScoredBoxes, register
from camloc.cam.maps import check_finite_maps, normalize_maps


def boxes_from_raw_maps(raw_maps: Tensor, size: tuple[int, int], threshold: str | float = "otsu",
                        mode: str = "all", chunk: int = BOX_CHUNK) -> BoxSet:
    """Raw maps ``(k, h, w)`` → upsample/ReLU/normalise to ``size`` → :func:`heatmaps_to_boxes`,
    a few classes at a time; ``class_index`` refers to positions along ``raw_maps`` (``ValueError``
    for non-finite maps, or a threshold or mode that :func:`heatmaps_to_boxes` refuses)."""
    check_finite_maps(raw_maps)
    threshold, mode = parse_threshold(threshold), parse_box_mode(mode)
    parts = []
    for start in range(0, len(raw_maps), chunk):
        heat = normalize_maps(raw_maps[start:start + chunk], size).cpu().numpy()
        found = normalized_maps_to_boxes(heat, threshold, mode)
        parts.append(BoxSet(found.class_index + start, found.xywh, found.heat))
    if not parts:
        return BoxSet(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0))
    return BoxSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("class_index", "xywh", "heat")))


# ----------------------------------------------------------------------------------------------
# the recipes
# ----------------------------------------------------------------------------------------------

@register("seed")
@dataclass(frozen=True)
class Seed(Recipe):
    """The course recipe, bit for bit (see :mod:`camloc.boxes.contours`).

    For each class map: ``m = minmax(ReLU(upsample(M)))``; foreground ``uint8(255·m) > otsu`` (or
    ``≥ threshold·255``); every outer contour's bounding box (``mode="largest"``: the contour of
    largest area); ``score = mean(m inside the box) × p``. A map with no foreground gives the
    whole image.
    """

    threshold: str | float = "otsu"
    mode: str = "all"
    on_device: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        parse_box_mode(self.mode)

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        if raw_maps.device.type != "cpu":
            return self.device_boxes(raw_maps, probs, size)
        found = boxes_from_raw_maps(raw_maps, size, self.threshold, self.mode)
        score = found.heat * probs.double().cpu().numpy()[found.class_index]
        return ScoredBoxes(found.class_index, found.xywh.astype(np.float64), score)

    def cut_levels(self) -> tuple[float, ...] | None:
        return threshold_levels(self.threshold)

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, self.mode)

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        heat = heat_sums(maps, owner, xywh)[0] / (xywh[:, 2] * xywh[:, 3])
        return ScoredBoxes(owner, xywh.astype(np.float64), heat * probs.double().cpu().numpy()[owner])
