"""Map post-processing shared by every method: bilinear upsampling (the grid stretched over the image, or each
cell where the network's geometry puts it: :mod:`camloc.cam.frame`), ReLU + min-max normalisation, and the
finiteness check done once on raw maps before any of that."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from camloc.cam.frame import MapFrame, to_image


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(size_in: int, size_out: int) -> Tensor:
    """``R (size_out, size_in)`` with ``R @ v`` = 1-D linear interpolation, ``align_corners=False``.

    Output pixel ``i`` samples the input at ``s = max((i + ½)·size_in/size_out − ½, 0)``, between
    ``⌊s⌋`` and ``min(⌊s⌋+1, size_in−1)`` — PyTorch's and OpenCV's bilinear convention.
    """
    src = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp_(min=0)
    low = src.floor().long().clamp_(max=size_in - 1)
    high = (low + 1).clamp_(max=size_in - 1)
    frac = src - low
    rows = torch.arange(size_out)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


def upsample_bilinear(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)`` as two matmuls ``R_y · M · R_xᵀ``.

    Same result as ``F.interpolate(mode="bilinear", align_corners=False)`` (to float rounding),
    several times faster on the CPU for many small maps.
    """
    height, width = size
    rows = _interpolation_matrix(maps.shape[-2], height).to(maps.device, maps.dtype)
    cols = _interpolation_matrix(maps.shape[-1], width).to(maps.device, maps.dtype)
    return torch.matmul(torch.matmul(rows, maps), cols.T)


def check_finite_maps(maps: Tensor) -> None:
    """A ``ValueError`` unless every value of the raw maps is finite (checked before upsampling:
    finite raw maps normalise into [0, 1], so the full-size maps need no second look)."""
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or infinite values; normalise finite maps to [0, 1]")


def normalize_maps(maps: Tensor, size: tuple[int, int] | None = None, frame: MapFrame | None = None) -> Tensor:
    """Upsample raw maps ``(..., h, w)`` to ``size = (H, W)`` (bilinear), ReLU, then min-max per map.

    ``frame``: where the maps' cells sit in the image (:class:`~camloc.cam.frame.MapFrame`; each output pixel
    reads the map at its own position in the image); ``None``: the grid stretched over the image
    (:func:`upsample_bilinear`, an unchanged map when ``size`` is its grid). ``out = (m − min m) / (max m − min m)``;
    a constant map (including all-zero after ReLU) becomes all zeros rather than NaN.
    """
    shape = maps.shape
    size = tuple(size or shape[-2:])
    flat = maps.reshape(-1, *shape[-2:]).float()
    if frame is not None:
        flat = to_image(flat, frame, size)
    else:
        flat = upsample_bilinear(flat, size) if size != tuple(shape[-2:]) else flat.clone()
    flat.clamp_(min=0)
    low = flat.amin((-2, -1), keepdim=True)
    span = flat.amax((-2, -1), keepdim=True) - low
    flat.sub_(low).mul_(torch.where(span > 0, 1 / span, 0.0))
    return flat.reshape(*shape[:-2], *size)
