"""Multi-level recipes: proposals cut at several levels of each map (``multilevel``), split into instances
(``instances``), on maps refined with the mirrored image (``multilevel-flip``, the default) or six views
(``multilevel-tta``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from camloc.boxes.device import trace as trace_masks
from camloc.boxes.evidence import EvidenceScored
from camloc.boxes.proposals import instance_cut, level_boxes
from camloc.boxes.registry import register


@register("multilevel")
@dataclass(frozen=True)
class MultiLevel(EvidenceScored):
    """Proposals from several thresholds, kept by evidence.

    Every outer contour of ``m ≥ t`` for ``t`` in ``levels`` (a fraction of each map's maximum,
    0.1 … 0.9 by default: tight boxes around peaks and wide ones around whole objects), scored
    ``p · √(share · soft IoU)``; per-class NMS at IoU 0.5 keeps the best of overlapping
    proposals; classes with ``p ≥ 0.001``.
    """

    levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        levels = tuple(float(t) for t in np.atleast_1d(np.asarray(self.levels, dtype=np.float64)))
        if not levels or not all(0.0 < t <= 1.0 for t in levels):
            raise ValueError(f"levels must be fractions in (0, 1], got {self.levels!r}")
        object.__setattr__(self, "levels", levels)

    on_device: ClassVar[bool] = True

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int], mask_bytes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        owner, _, xywh = level_boxes(u8, self.levels, mask_bytes)
        return owner, xywh

    def cut_levels(self) -> tuple[float, ...] | None:
        return self.levels

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, levels=True)


@register("instances")
@dataclass(frozen=True)
class Instances(MultiLevel):
    """Multi-level proposals, split into instances.

    Local maxima of the map (≥ ``min_peak``, at least half a feature cell apart) seed a
    watershed of ``−m`` over ``m ≥ min(levels)``; every level's regions are cut along the
    borders between basins (:func:`camloc.boxes.proposals.instance_cut`), so a region holding two
    peaks — two people side by side — gives two boxes instead of one box around both, at every
    level (as Peak Response Maps). Scoring, NMS and gating as :class:`MultiLevel`.
    """

    min_peak: float = 0.3
    on_device: ClassVar[bool] = False  # its watershed needs the whole map on the CPU
    traces_on_grid: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.min_peak) <= 1.0:
            raise ValueError(f"min_peak must be in [0, 1], got {self.min_peak!r}")
        if self.box_scale is not None:
            raise ValueError("instances traces its watershed at the image's resolution: box_scale must be 'full'")

    #: As :class:`MultiLevel`, plus each map's instance cut (1) and, while it is drawn, the watershed's labels
    #: carried back to full resolution (int32) and the borders between them (2).
    host_bytes_per_pixel: ClassVar[int] = 20

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int], mask_bytes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        cut = np.stack([instance_cut(m, min(self.levels), float(self.min_peak), grid) for m in heat])
        np.multiply(u8, cut, out=cut)
        owner, _, xywh = level_boxes(cut, self.levels, mask_bytes)
        return owner, xywh


@register("multilevel-flip")
@dataclass(frozen=True)
class MultiLevelFlip(MultiLevel):
    """:class:`MultiLevel` on maps refined with the mirrored image (``flip``, two forward passes).

    The default (with its maps aligned: the evidence recipes' ``default_align``), chosen by the rule of
    docs/decisions.md when issue 21 laid maps where the network looks: AP 2.00× / AP50 1.69× ``seed`` on 92
    real images, 3.40× / 3.09× on synthetic scenes, lower bounds above 1, at two forward passes where
    :class:`MultiLevelTTA` takes six (``bench/recipes.py --methods cam``). Its boxes are traced at 2× the feature grid
    (``box_scale=2``, on the maps' device) and scaled to the image: AP and AP50 within the
    bootstrap intervals of tracing at the image's resolution on real and synthetic images, at
    1/4–1/12 of the box stage's time (``bench/box_resolution.py``; README). ``box_scale="full"``
    traces at the image's resolution.
    """

    flip: bool = True
    box_scale: int | None = 2


@register("multilevel-tta")
@dataclass(frozen=True)
class MultiLevelTTA(MultiLevel):
    """:class:`MultiLevel` on maps averaged over six views (``tta``: scales 0.75 / 1 / 1.25, each with its
    mirror; six forward passes).

    The default before maps were aligned, chosen by the rule of docs/decisions.md (fixed before the comparison):
    among all map methods × recipes × gates within 10× the previous default's time, the only candidates whose
    AP and AP50 ratios to ``seed`` had 95 % intervals above 1 on real and synthetic images were ``multilevel``
    and this; this had the higher gain (``bench/recipes.py``). With alignment, :class:`MultiLevelFlip` won.
    """

    tta: bool = True
