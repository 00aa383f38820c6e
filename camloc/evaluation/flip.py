"""Flip consistency: does a map of the mirrored image, flipped back, lie where the map of the image lies?

A network that sees an object at some place of an image sees the mirrored object at the mirrored place; so
the map of the mirrored image, mirrored back, should cover what the map of the image covers — *if* both maps
are laid on the image where their cells really look. Laid with the wrong geometry, the two are shifted
against each other by twice the error (each view's error mirrored): the shift measures the error.

:func:`flip_consistency` lays both maps on a fine grid over the image (``per_cell`` samples a cell, each map
through its own :class:`~camloc.cam.frame.MapFrame`, or stretched over the image without one), normalises them
(ReLU, min-max: :func:`camloc.cam.normalize_maps`) and reports, per map,

* ``shift`` — the horizontal shift ``d`` (in cells of the map; positive: the mirrored view's map lies to the
  right) that maximises the Pearson correlation of ``plain(x)`` and ``mirrored(x + d)`` over their overlap,
  searched at 1/``per_cell`` cell within ``reach`` cells and refined by a parabola through the best three;
* ``correlation`` — their Pearson correlation as laid (zero shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from camloc.cam import normalize_maps
from camloc.cam.frame import MapFrame


@dataclass(frozen=True)
class FlipConsistency:
    """Per map: ``shift`` (cells) and ``correlation`` at zero shift (see the module docstring)."""

    shift: np.ndarray  # (k,) float64
    correlation: np.ndarray  # (k,) float64


def pearson(first: Tensor, second: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``(k, n)`` rows (0 where a row is constant), float64."""
    a = first.double() - first.double().mean(1, keepdim=True)
    b = second.double() - second.double().mean(1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-300), torch.zeros_like(norm))


def flip_consistency(maps: Tensor, mirrored: Tensor, frame: MapFrame | None = None,
                     mirrored_frame: MapFrame | None = None, per_cell: int = 16, reach: int = 3) -> FlipConsistency:
    """Flip consistency of raw maps ``(k, h, w)`` and the raw maps ``(k, h, w)`` of the mirrored image, already
    flipped back, each laid on the image through its frame (``None``: the grid stretched over the image); see the
    module docstring. ``per_cell`` ≥ 2 samples per cell, ``reach`` ≥ 1 cells either way."""
    if maps.shape != mirrored.shape or maps.ndim != 3:
        raise ValueError(f"maps and mirrored maps must both be (k, h, w), got {tuple(maps.shape)} and "
                         f"{tuple(mirrored.shape)}")
    if per_cell < 2 or reach < 1:
        raise ValueError(f"per_cell must be ≥ 2 and reach ≥ 1, got {per_cell} and {reach}")
    count, height, width = maps.shape
    if count == 0:
        return FlipConsistency(np.zeros(0), np.zeros(0))
    size = (height * per_cell, width * per_cell)
    plain = normalize_maps(maps, size, frame).double()
    other = normalize_maps(mirrored, size, mirrored_frame).double()
    columns = size[1]
    steps = min(reach * per_cell, columns // 2)
    scores = []
    for shift in range(-steps, steps + 1):
        a = plain[..., max(0, -shift):columns - max(0, shift)].reshape(count, -1)
        b = other[..., max(0, shift):columns + min(0, shift)].reshape(count, -1)
        scores.append(pearson(a, b))
    table = torch.stack(scores, 1)  # (k, 2·steps + 1)
    best = table.argmax(1)
    inner = best.clamp(1, table.shape[1] - 2)
    low, mid, high = (table.gather(1, (inner + d)[:, None])[:, 0] for d in (-1, 0, 1))
    curvature = low - 2 * mid + high
    refine = torch.where((best == inner) & (curvature < 0), 0.5 * (low - high) / curvature.clamp(max=-1e-300), 0.0)
    shift = (best.double() + refine - steps) / per_cell
    return FlipConsistency(shift.cpu().numpy(), table[:, steps].cpu().numpy())
