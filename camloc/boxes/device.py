"""The box stage's per-pixel work on the model's device; only bit-packed masks cross to the CPU.

On a GPU the forward pass is so fast that upsampling, normalising, thresholding and tracing 80
full-resolution maps per image on the CPU would be the whole cost of a run. Here the maps never
leave the device: upsample → ReLU → min-max → ``uint8`` → threshold (Otsu from a 256-bin
histogram per map, or fixed levels) → masks packed 8 pixels a byte; the CPU only traces the
outer contours of the unpacked masks (OpenCV, as the CPU path) and the boxes' heat sums are read
from summed-area tables kept on the device.

It gives the CPU path's boxes exactly: the masks are the same bits (the ``uint8`` maps are the same
numbers, :func:`otsu_levels` is OpenCV's Otsu operation for operation, the fixed levels are the
same integers), and the tracing is the same call. Scores come from float64 summed-area tables
instead of per-box float64 means: equal to a few units in the last place (relative difference
≤ 1e-9 on real and random maps, tested). On a GPU the upsampling's float32 sums may round
differently from the CPU's, which can move a pixel that sits within one float32 ulp of a ``uint8``
step; that was not measured here (no GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from camloc.boxes.contours import outer_boxes, stacked_masks, trace_stacked
from camloc.boxes.levels import histograms, otsu_levels, thresholds, to_uint8
from camloc.cam import check_finite_maps, normalize_maps


def pack(masks: Tensor) -> np.ndarray:
    """Boolean masks ``(n, H, W)`` → bytes ``(n, H, ⌈W/8⌉)`` on the CPU (``numpy.packbits`` order: the first
    pixel is the high bit)."""
    n, height, width = masks.shape
    columns = -(-width // 8)
    padded = torch.zeros(n, height, columns * 8, dtype=torch.uint8, device=masks.device)
    padded[..., :width] = masks
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=masks.device)
    return (padded.view(n, height, columns, 8) * weights).sum(-1, dtype=torch.uint8).cpu().numpy()


def unpack_stacked(packed: np.ndarray, width: int) -> np.ndarray:
    """Packed masks → :func:`camloc.boxes.contours.stacked_masks` (0/1, an empty row after each), ready to trace."""
    n, height, _ = packed.shape
    stacked = stacked_masks(n, height, width)
    stacked[:, :height] = np.unpackbits(packed, axis=-1, count=width)
    return stacked


@dataclass(frozen=True)
class DeviceMaps:
    """One image's maps after the device stage: packed masks (CPU) to trace, summed-area tables (device)."""

    size: tuple[int, int]
    packed: np.ndarray  # (n, H, ⌈W/8⌉) uint8: mask i belongs to map i // per_map
    per_map: int  # masks per map (1, or one per level)
    tables: Tensor  # (k, H+1, W+1) float64 summed-area tables of the normalised maps, on the device


def device_maps(raw_maps: Sequence[Tensor], sizes: Sequence[tuple[int, int]], levels: Sequence[float] | None
                ) -> list[DeviceMaps]:
    """Normalise each image's raw maps ``(k, h, w)`` to its ``(H, W)`` on their device and threshold them there.

    ``levels``: fractions ``t`` of each map's max (foreground ``u8 > ⌈t·255⌉ − 1``), or ``None`` for Otsu's
    level of each map (histograms counted on the device; the levels themselves, 256 float64 steps for all
    maps of all images at once, computed exactly as OpenCV on the CPU). Images of one size (and map grid) are
    processed together: one call per distinct size, not per image.
    """
    groups: dict[tuple[int, ...], list[int]] = {}  # by image size and map grid
    for index, size in enumerate(sizes):
        groups.setdefault((*size, *raw_maps[index].shape[-2:]), []).append(index)
    heats, u8s = {}, {}
    for key, members in groups.items():
        stacked = torch.cat([raw_maps[i] for i in members])
        check_finite_maps(stacked)
        heats[key] = normalize_maps(stacked, key[:2])
        u8s[key] = to_uint8(heats[key])
    if levels is None:  # every map's Otsu level in one pass
        order = list(groups)
        counts = np.concatenate([histograms(u8s[key]) for key in order]) if order else np.zeros((0, 256))
        otsu = torch.from_numpy(otsu_levels(counts)).view(-1, 1)
        bounds = np.cumsum([0] + [len(u8s[key]) for key in order])
        cuts = {key: otsu[a:b] for key, a, b in zip(order, bounds[:-1], bounds[1:])}
    else:
        cuts = {key: thresholds(u8s[key], levels) for key in groups}
    out: list[DeviceMaps | None] = [None] * len(sizes)
    for key, members in groups.items():
        size = key[:2]
        u8, per_map = u8s[key], cuts[key].shape[1]
        masks = u8[:, None] > cuts[key].to(u8.device, torch.int16)[:, :, None, None]
        packed = pack(masks.reshape(-1, *size))
        tables = torch.zeros(len(u8), size[0] + 1, size[1] + 1, dtype=torch.float64, device=u8.device)
        tables[:, 1:, 1:] = heats[key].double().cumsum(-1).cumsum(-2)
        start = 0
        for i in members:
            count = len(raw_maps[i])
            out[i] = DeviceMaps(size, packed[start * per_map:(start + count) * per_map], per_map,
                                tables[start:start + count])
            start += count
    return out


def trace(maps_on_cpu: np.ndarray, width: int, mode: str = "all", levels: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of packed masks on the CPU: ``(mask index, xywh)``. ``levels=False``: the course recipe's
    boxes (:func:`camloc.boxes.contours.outer_boxes`, with ``mode`` and the whole image for an empty mask);
    ``levels=True``: every outer contour's box and nothing for an empty mask."""
    stacked = unpack_stacked(maps_on_cpu, width)
    if levels:
        owner, rects, _ = trace_stacked(stacked)
        return owner, rects
    return outer_boxes(stacked, mode)


def box_sums(tables: Tensor, owner: np.ndarray, xywh: np.ndarray) -> np.ndarray:
    """``Σ m`` over each box from the device's summed-area tables (float64, back on the CPU)."""
    if len(owner) == 0:
        return np.zeros(0)
    device = tables.device
    k = torch.as_tensor(owner, device=device)
    x, y, w, h = (torch.as_tensor(c, device=device) for c in np.asarray(xywh, dtype=np.int64).T)
    sums = (tables[k, y + h, x + w] - tables[k, y, x + w]) - (tables[k, y + h, x] - tables[k, y, x])
    return sums.cpu().numpy()
