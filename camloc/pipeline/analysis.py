"""What the forward pass leaves: each image's probabilities and raw class maps, for one image or a batch, and
how the views (scales, mirrors) of an image are averaged into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camloc.boxes import Recipe, class_indices
from camloc.cam.maps import normalize_maps

TTA_SCALES = (0.75, 1.0, 1.25)



@dataclass(frozen=True)
class Analysis:
    """One image after the forward pass: probabilities of every class and raw maps of some."""

    size: tuple[int, int]  # original (H, W)
    probs: Tensor  # (K,) every class's probability
    classes: Tensor  # (k,) the class indices whose maps are held
    raw_maps: Tensor  # (k, h, w) raw maps (no ReLU / normalisation)
    views: tuple[tuple[float, bool], ...] = ((1.0, False),)  # the (scale, flip) views averaged

    def heatmaps(self, classes: Sequence[int] | None = None) -> Tensor:
        """Normalised maps ``(k, H, W)`` in [0, 1] at the original size, for ``classes`` (default: all held)."""
        rows = self.rows(classes) if classes is not None else slice(None)
        return normalize_maps(self.raw_maps[rows], self.size)

    def rows(self, classes: Sequence[int]) -> list[int]:
        """Positions in ``raw_maps`` of the given class indices (a ``ValueError`` if one is not held)."""
        where = {int(k): i for i, k in enumerate(self.classes.tolist())}
        indices = class_indices(classes, len(self.probs))
        missing = [k for k in indices if k not in where]
        if missing:
            raise ValueError(f"no map computed for class indices {missing}")
        return [where[k] for k in indices]

    @staticmethod
    def average(views: Sequence[Analysis]) -> Analysis:
        """One image's analysis from its per-view analyses (``Localizer.analyze(image, views=[view])`` for
        each of ``Localizer.views()``, in that order): the same numbers as analysing all views at once."""
        maps, probs = average_views([(a.raw_maps[None], a.probs[None]) for a in views])
        return Analysis(views[0].size, probs[0], views[0].classes, maps[0], tuple(v for a in views for v in a.views))

    @property
    def mirrored(self) -> bool:
        """Whether a mirrored view is averaged in (what a ``flip`` recipe needs)."""
        return any(flip for _, flip in self.views)



@dataclass(frozen=True)
class BatchAnalysis:
    """A batch after the forward pass, on the model's device: what :class:`Analysis` holds for one image."""

    sizes: tuple[tuple[int, int], ...]  # original (H, W) of each image
    probs: Tensor  # (B, K)
    classes: Tensor  # (k,) the class indices whose maps are held
    raw_maps: Tensor  # (B, k, h, w)
    views: tuple[tuple[float, bool], ...] = ((1.0, False),)
    held: Tensor | None = None  # (B, k) bool: the classes each image's maps were computed for (None: all)

    @classmethod
    def from_slots(cls, sizes: tuple[tuple[int, int], ...], probs: Tensor, slots: Tensor, counts: Sequence[int],
                   slot_maps: Tensor, views: tuple[tuple[float, bool], ...]) -> BatchAnalysis:
        """Maps of per-image class slots (``slots (B, s)``, the first ``counts[b]`` valid) held as the union of
        the batch's classes: other images' classes are zero maps, marked not ``held``."""
        count = torch.as_tensor(counts, device=slots.device)
        valid = torch.arange(slots.shape[1], device=slots.device) < count[:, None]
        union = torch.unique(slots[valid])
        image, slot = torch.nonzero(valid, as_tuple=True)
        column = torch.searchsorted(union, slots[image, slot])
        maps = slot_maps.new_zeros(len(sizes), len(union), *slot_maps.shape[-2:])
        maps[image, column] = slot_maps[image, slot]
        held = torch.zeros(len(sizes), len(union), dtype=torch.bool, device=slots.device)
        held[image, column] = True
        return cls(sizes, probs, union, maps, views, held)

    def __len__(self) -> int:
        return len(self.sizes)

    def gate(self, recipe: Recipe, supported: Tensor) -> Tensor:
        """Boolean ``(B, K)``: the classes ``recipe`` gives boxes per image, among the ``supported`` ones whose
        maps that image holds."""
        gate = recipe.select(self.probs, supported.to(self.probs.device))
        if self.held is not None:
            held = torch.zeros_like(gate)
            held[:, self.classes] = self.held
            gate &= held
        return gate

    def image(self, index: int) -> Analysis:
        """The analysis of one image of the batch (views of the batch's tensors, no copy)."""
        if self.held is None:
            return Analysis(self.sizes[index], self.probs[index], self.classes, self.raw_maps[index], self.views)
        rows = torch.nonzero(self.held[index]).flatten()
        return Analysis(self.sizes[index], self.probs[index], self.classes[rows], self.raw_maps[index, rows],
                        self.views)

    def images(self) -> list[Analysis]:
        return [self.image(b) for b in range(len(self))]



def sum_in_order(tensors: Sequence[Tensor]) -> Tensor:
    """``((t0 + t1) + t2) + …``: a fixed order of float additions, so a view's numbers never depend on
    how the views were batched."""
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total



def average_views(views: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Mean of per-view ``(raw maps (B, k, h, w), probabilities (B, K))``, maps resized to the first view's grid."""
    grid = views[0][0].shape[-2:]
    maps = [m if m.shape[-2:] == grid else m.new_zeros(*m.shape[:2], *grid) if not m.numel() else
            F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m, _ in views]
    return sum_in_order(maps) / len(views), sum_in_order([p for _, p in views]) / len(views)



def per_image_classes(classes: Any) -> bool:
    """Whether a ``classes`` argument lists each image's own classes (a list of lists, or a ``(B, k)`` tensor)."""
    if classes is None:
        return False
    if isinstance(classes, (Tensor, np.ndarray)):
        return classes.ndim == 2
    if isinstance(classes, str) or not len(classes):
        return False
    first = classes[0]
    return (isinstance(first, (Tensor, np.ndarray)) and first.ndim > 0) or (
        isinstance(first, Sequence) and not isinstance(first, str))



def gated_slots(gate: Tensor) -> tuple[Tensor, list[int]]:
    """Boolean ``(B, K)`` gates → ``(B, k)`` class indices per image (its gated classes in index order,
    padded with its first one, or class 0) and each image's count, ``k`` the largest count."""
    counts = gate.sum(1)
    width = int(counts.max()) if len(gate) else 0
    order = torch.argsort((~gate).to(torch.int8), dim=1, stable=True)[:, :width]
    padded = torch.where(torch.arange(width, device=gate.device) < counts[:, None], order, order[:, :1])
    return padded, counts.tolist()

