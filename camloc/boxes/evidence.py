"""The evidence-scored recipes' shared base (proposals → ``p · √(share · soft IoU)`` → per-class NMS) and
``evidence``: the seed's boxes scored by evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from camloc.boxes.contours import (
    heatmaps_to_boxes,
    parse_box_mode,
    parse_threshold,
    threshold_levels,
    to_uint8,
    with_whole_image,
)
from camloc.boxes.device import DeviceMaps, heat_sums
from camloc.boxes.device import trace as trace_masks
from camloc.boxes.grid import GridBoxes, grid_boxes
from camloc.boxes.proposals import box_evidence, evidence, integral_images, per_class_nms
from camloc.boxes.registry import (
    FULL_RESOLUTION,
    MAX_BOX_SCALE,
    BatchBoxes,
    Recipe,
    ScoredBoxes,
    host_chunks,
    register,
)
from camloc.cam.frame import MapFrame
from camloc.cam.maps import check_finite_maps, normalize_maps
from camloc.runtime.memory import memory_budget


@dataclass(frozen=True)
class EvidenceScored(Recipe):
    """Shared by the evidence-scored recipes: proposals of each map (:meth:`proposals`), then

    ``score = p(class) · √(share · soft IoU)`` (:func:`camloc.boxes.proposals.box_evidence`), then
    greedy per-class NMS at ``nms_iou``. A map with no proposal gets the whole image. On the CPU, maps are
    normalised and traced :data:`~camloc.boxes.registry.BOX_CHUNK` classes at a time, fewer for a large image
    (:func:`~camloc.boxes.registry.host_chunks`: within the box stage's memory budget). Classes with ``p < 0.001`` get
    no boxes (their boxes would score below 0.001: the tail of every precision-recall curve);
    on 369 coco-mini train images that keeps every class present in the image, and it skips
    about 60 % of the 80 maps.
    """

    classes: str | tuple[int, ...] = "prob:0.001"
    nms_iou: float = 0.5
    box_scale: int | None = None
    #: Maps laid on the image by the model's measured geometry (issue 21's evidence: docs/decisions.md).
    default_align: ClassVar[str] = "measured"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou!r}")
        scale = self.box_scale
        if isinstance(scale, str) and scale == FULL_RESOLUTION:
            object.__setattr__(self, "box_scale", scale := None)
        if scale is not None and (isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer))
                                  or not 1 <= scale <= MAX_BOX_SCALE):
            raise ValueError(f"box_scale must be an integer from 1 to {MAX_BOX_SCALE} (boxes at that many times the "
                             f"feature grid) or {FULL_RESOLUTION!r} (at the image's resolution), got {scale!r}")

    #: Regions kept per map and level on the grid (``all`` | ``largest``).
    grid_mode: ClassVar[str] = "all"
    #: Whether the recipe can trace its boxes on the feature grid (``box_scale``) at all.
    traces_on_grid: ClassVar[bool] = True

    def grid(self, raw_maps: Tensor, probs: Tensor, sizes: Tensor, group: Tensor, budget: int | None = None,
             frame: MapFrame | None = None) -> GridBoxes:
        """:func:`camloc.boxes.grid.grid_boxes` with this recipe's parameters."""
        mode = getattr(self, "mode", self.grid_mode)
        return grid_boxes(raw_maps, probs, sizes, group, int(self.box_scale), self.cut_levels(), mode,
                          float(self.nms_iou), budget, frame)

    def batch_boxes(self, raw_maps: Tensor, probs: Tensor, classes: Tensor, gate: Tensor,
                    sizes: Sequence[tuple[int, int]], budget: int | None = None, frame: MapFrame | None = None
                    ) -> BatchBoxes:
        if self.box_scale is None:
            return super().batch_boxes(raw_maps, probs, classes, gate, sizes, budget, frame)
        device = raw_maps.device
        classes = classes.to(device)
        image, row = torch.nonzero(gate.to(device)[:, classes], as_tuple=True)
        found = self.grid(raw_maps[image, row], probs.to(device)[image, classes[row]],
                          torch.tensor(sizes, device=device)[image], image * len(classes) + row, budget, frame)
        return BatchBoxes(image[found.map_index].cpu().numpy(), classes[row[found.map_index]].cpu().numpy(),
                          found.xywh.cpu().numpy(), found.score.cpu().numpy())

    #: Working memory of one map normalised and boxed at full resolution on the CPU, bytes a pixel: the float32
    #: map and its float64 summed-area table (12), its uint8 copy (1) while the proposals are traced; the level
    #: masks have what is left of the budget (:func:`camloc.boxes.proposals.level_boxes`).
    host_bytes_per_pixel: ClassVar[int] = 13

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int], mask_bytes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(map index (n,), xywh (n, 4))`` for normalised maps ``heat (k, H, W)`` (``u8`` = uint8(255·heat));
        ``grid`` is the raw maps' ``(h, w)``; ``mask_bytes``: what the masks traced at once may take (``None``:
        all at once)."""
        raise NotImplementedError

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int], budget: int | None = None,
              frame: MapFrame | None = None) -> ScoredBoxes:
        if self.box_scale is not None:
            count, device = len(raw_maps), raw_maps.device
            found = self.grid(raw_maps, probs.to(device), torch.tensor([size], device=device).expand(count, 2),
                              torch.arange(count, device=device), frame=frame)
            return ScoredBoxes(found.map_index.cpu().numpy(), found.xywh.cpu().numpy(), found.score.cpu().numpy())
        if raw_maps.device.type != "cpu" and self.on_device:
            return self.device_boxes(raw_maps, probs, size, frame)
        check_finite_maps(raw_maps)
        owners, rects, scores = [], [], []
        budget = memory_budget("cpu", budget)
        for span in host_chunks(len(raw_maps), size, self.host_bytes_per_pixel, budget):
            heat = normalize_maps(raw_maps[span], size, frame).cpu().numpy()
            masks = max(0, budget - heat.size * self.host_bytes_per_pixel)  # what the level masks may take
            owner, xywh = with_whole_image(*self.proposals(heat, to_uint8(heat), tuple(raw_maps.shape[-2:]), masks),
                                           len(heat), size)
            owners.append(owner + span.start)
            rects.append(xywh)
            scores.append(box_evidence(integral_images(heat), owner, xywh))
            del heat
        if not owners:
            return ScoredBoxes.empty()
        return self.keep_best(np.concatenate(owners), np.concatenate(rects), np.concatenate(scores), probs)

    def keep_best(self, owner: np.ndarray, xywh: np.ndarray, evidence_of_box: np.ndarray, probs: Tensor
                  ) -> ScoredBoxes:
        """``score = p · evidence``, per-class NMS, sorted by class then best first."""
        score = evidence_of_box * probs.double().cpu().numpy()[owner]
        kept = per_class_nms(owner, xywh, score, float(self.nms_iou))
        kept = kept[np.lexsort((-score[kept], owner[kept]))]  # by class, best first
        return ScoredBoxes(owner[kept], xywh[kept].astype(np.float64), score[kept])

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        owner, xywh = with_whole_image(owner // maps.per_map, xywh, len(maps.raw), maps.size)
        inside, totals = heat_sums(maps, owner, xywh)
        return self.keep_best(owner, xywh, evidence(inside, totals, xywh), probs)



@register("evidence")
@dataclass(frozen=True)
class Evidence(EvidenceScored):
    """The seed's boxes (Otsu or a fraction of the max, outer contours, all or the largest),
    scored by evidence: ``score = p · √(share · soft IoU)``, classes with ``p ≥ 0.001``, per-class NMS."""

    threshold: str | float = "otsu"
    mode: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        parse_box_mode(self.mode)

    on_device: ClassVar[bool] = True

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int], mask_bytes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        found = heatmaps_to_boxes(heat, self.threshold, self.mode)
        return found.class_index, found.xywh

    def grid_levels(self) -> tuple[float, ...] | None:
        return None if self.threshold == "otsu" else (float(self.threshold),)

    def cut_levels(self) -> tuple[float, ...] | None:
        return threshold_levels(self.threshold)

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, self.mode)
