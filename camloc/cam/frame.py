"""Where a map's cells sit in its image: :class:`MapFrame`, and the linear maps that resample a map by it.

A map of ``h × w`` cells says nothing by itself about *where* in the image each cell looks. Its frame does:
per axis (y, x), cell ``i``'s centre lies at ``origin + step·i``, in fractions of the image's extent (0 its
top/left edge, 1 its bottom/right edge; a pixel ``p`` of an ``N``-pixel axis has its centre at ``(p + ½)/N``).

The frame of a network's map comes from the network's geometry (:mod:`camloc.models.geometry`): a cell
centred on input pixel ``offset + stride·i`` of an ``S``-pixel input has ``origin = (offset + ½)/S`` and
``step = stride/S`` — the input is the whole image stretched to ``S × S``, so fractions carry over unchanged.
``None`` instead of a frame is the old convention every caller keeps by default: the grid stretched over the
image, cell ``i`` at ``(i + ½)/h`` (``align_corners=False``), :func:`camloc.cam.maps.upsample_bilinear`.

Sampling a map at a position ``t`` (a fraction of the image) reads cell coordinate ``u = (t − origin)/step``,
linearly between its two nearest cells, and the nearest edge cell beyond the first or last cell's centre
(as ``align_corners=False`` does beyond the grid's half-cell border).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MapFrame:
    """Cell ``(i, j)`` of a map is centred at ``(origin[0] + step[0]·i, origin[1] + step[1]·j)`` of its image,
    in fractions of the image's height and width."""

    origin: tuple[float, float]
    step: tuple[float, float]

    def __post_init__(self) -> None:
        values = (*self.origin, *self.step)
        if len(self.origin) != 2 or len(self.step) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"a map frame needs two finite origins and steps, got {self.origin!r}, {self.step!r}")
        if min(self.step) <= 0:
            raise ValueError(f"a map frame's steps must be positive, got {self.step!r}")
        object.__setattr__(self, "origin", (float(self.origin[0]), float(self.origin[1])))
        object.__setattr__(self, "step", (float(self.step[0]), float(self.step[1])))

    @classmethod
    def of_network(cls, offset: tuple[float, float], stride: tuple[float, float], input_size: tuple[int, int]
                   ) -> MapFrame:
        """The frame of cells centred on input pixel ``offset + stride·i`` of an ``input_size = (H, W)`` input."""
        return cls(tuple((o + 0.5) / n for o, n in zip(offset, input_size)),
                   tuple(s / n for s, n in zip(stride, input_size)))

    def mirrored(self, width: int) -> MapFrame:
        """The frame of a ``width``-cell-wide map of the mirrored image once the map is flipped back
        (``maps.flip(-1)``): its cell ``j`` was cell ``width − 1 − j``, centred at
        ``1 − (origin + step·(width − 1 − j))``."""
        return MapFrame((self.origin[0], 1.0 - self.origin[1] - self.step[1] * (width - 1)), self.step)

    def cell_positions(self, axis: int, count: int) -> Tensor:
        """float64 ``(count,)``: where the centres of ``count`` cells lie along ``axis`` (0: y, 1: x)."""
        return self.origin[axis] + self.step[axis] * torch.arange(count, dtype=torch.float64)


def pixel_positions(count: int) -> Tensor:
    """float64 ``(count,)``: the centres ``(p + ½)/count`` of ``count`` pixels covering an axis."""
    return (torch.arange(count, dtype=torch.float64) + 0.5) / count


@functools.lru_cache(maxsize=256)
def sampling_matrix(size_in: int, origin: float, step: float, positions: tuple[float, ...]) -> Tensor:
    """``R (len(positions), size_in)`` float64: ``R @ v`` reads a row of ``size_in`` cells centred at
    ``origin + step·i`` at each position (linear between the two nearest cells, the edge cell beyond)."""
    where = (torch.tensor(positions, dtype=torch.float64) - origin) / step
    where = where.clamp_(0, size_in - 1)
    low = where.floor().long().clamp_(max=size_in - 1)
    high = (low + 1).clamp_(max=size_in - 1)
    frac = where - low
    rows = torch.arange(len(positions))
    matrix = torch.zeros(len(positions), size_in, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


def axis_matrix(frame: MapFrame, axis: int, size_in: int, positions: Tensor) -> Tensor:
    """:func:`sampling_matrix` of ``frame``'s ``axis`` at ``positions`` (fractions of the image)."""
    return sampling_matrix(size_in, frame.origin[axis], frame.step[axis], tuple(positions.tolist()))


def resample(maps: Tensor, frame: MapFrame, rows: Tensor, columns: Tensor) -> Tensor:
    """Maps ``(N, h, w)`` in ``frame`` read at image positions ``rows (H,)`` × ``columns (W,)`` → ``(N, H, W)``,
    as two matmuls ``R_y · M · R_xᵀ`` in the maps' dtype, on their device."""
    height = axis_matrix(frame, 0, maps.shape[-2], rows).to(maps.device, maps.dtype)
    width = axis_matrix(frame, 1, maps.shape[-1], columns).to(maps.device, maps.dtype)
    return torch.matmul(torch.matmul(height, maps), width.T)


def to_image(maps: Tensor, frame: MapFrame, size: tuple[int, int]) -> Tensor:
    """Maps ``(N, h, w)`` in ``frame`` → ``(N, H, W)`` at the pixels of an ``size = (H, W)`` image (or of any
    regular grid laid over the whole image)."""
    return resample(maps, frame, pixel_positions(size[0]), pixel_positions(size[1]))


def to_frame(maps: Tensor, frame: MapFrame, target: MapFrame, grid: tuple[int, int]) -> Tensor:
    """Maps ``(N, h, w)`` in ``frame`` → ``(N, *grid)`` read at the cell centres of ``target`` (a view's maps
    carried into another view's cells before they are averaged)."""
    return resample(maps, frame, target.cell_positions(0, grid[0]), target.cell_positions(1, grid[1]))
