"""Where each map is cut, on the maps' device: ``uint8`` quantisation, Otsu's level (OpenCV's, operation for
operation, from histograms counted on the device) or fixed fractions of the max."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from camloc.boxes.contours import fraction_cut

FLT_EPSILON = float(np.finfo(np.float32).eps)


def otsu_levels(histograms: np.ndarray) -> np.ndarray:
    """OpenCV's Otsu threshold (``getThreshVal_Otsu_8u``) of each 256-bin histogram ``(n, 256)``.

    The same float64 operations in the same order, vectorised over maps: ``μ = Σ i·h_i / N``; for
    each bin ``i``: ``μ1 ← μ1·q1``, ``q1 ← q1 + h_i/N``, ``q2 = 1 − q1``; bins where ``min(q1, q2) <
    FLT_EPSILON`` or ``max(q1, q2) > 1 − FLT_EPSILON`` are skipped (``μ1`` keeps its product);
    otherwise ``μ1 ← (μ1 + i·p_i)/q1``, ``μ2 = (μ − q1·μ1)/q2``, ``σ = q1·q2·(μ1 − μ2)·(μ1 − μ2)``,
    and the first bin with the largest ``σ`` wins (0 when none is valid). Foreground is ``u8 > level``.
    """
    counts = np.asarray(histograms, dtype=np.float64)
    scale = 1.0 / np.asarray(histograms, dtype=np.int64).sum(1).astype(np.float64)
    mu = np.zeros(len(counts))
    for i in range(256):
        mu = mu + i * counts[:, i]
    mu = mu * scale
    mu1, q1 = np.zeros(len(counts)), np.zeros(len(counts))
    max_sigma, level = np.zeros(len(counts)), np.zeros(len(counts), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(256):
            p_i = counts[:, i] * scale
            mu1 = mu1 * q1
            q1 = q1 + p_i
            q2 = 1.0 - q1
            valid = ~((np.minimum(q1, q2) < FLT_EPSILON) | (np.maximum(q1, q2) > 1.0 - FLT_EPSILON))
            mu1 = np.where(valid, (mu1 + i * p_i) / q1, mu1)
            mu2 = (mu - q1 * mu1) / q2
            sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
            better = valid & (sigma > max_sigma)
            max_sigma = np.where(better, sigma, max_sigma)
            level = np.where(better, i, level)
    return level


def to_uint8(heat: Tensor) -> Tensor:
    """``uint8(255·m)`` with truncation, on the device (the same numbers as :func:`camloc.boxes.contours.to_uint8`)."""
    return (heat * 255.0).to(torch.uint8)


def histograms(u8: Tensor) -> np.ndarray:
    """256-bin histograms ``(k, 256)`` of ``uint8`` maps ``(k, H, W)``, counted on the device."""
    k = len(u8)
    if k == 0:
        return np.zeros((0, 256), np.int64)
    offsets = torch.arange(k, device=u8.device).view(k, 1) * 256
    flat = (u8.reshape(k, -1).long() + offsets).reshape(-1)
    return torch.bincount(flat, minlength=256 * k).view(k, 256).cpu().numpy()


def thresholds(u8: Tensor, levels: Sequence[float] | None) -> Tensor:
    """``(N, L)`` cuts for ``u8 > cut`` of ``uint8`` maps ``(N, H, W)``: each level ``t`` as ``⌈t·255⌉ − 1``, or
    (``levels=None``) Otsu's level of each map, computed as OpenCV does."""
    if levels is None:
        return torch.from_numpy(otsu_levels(histograms(u8))).to(u8.device).view(-1, 1)
    return torch.tensor([fraction_cut(t) for t in levels], device=u8.device).repeat(len(u8), 1)

