"""The box stage's per-pixel work on the model's device; only bit-packed masks cross to the CPU.

On a GPU the forward pass is so fast that upsampling, normalising, thresholding and tracing 80
full-resolution maps per image on the CPU would be the whole cost of a run. Here the maps never
leave the device: upsample → ReLU → min-max → ``uint8`` → threshold (Otsu from a 256-bin
histogram per map, or fixed levels) → masks packed 8 pixels a byte; the CPU only traces the
outer contours of the unpacked masks (OpenCV, as the CPU path) and the boxes' heat sums are read
from summed-area tables computed again on the device when the boxes come back (:func:`heat_sums`).

Memory is a budget (:func:`camloc.runtime.memory.memory_budget`): the maps of a batch are normalised, cut and
packed a chunk at a time (:func:`camloc.runtime.memory.chunks`, sized by :func:`stage_bytes`), and nothing of
full resolution outlives its chunk but the packed masks (an eighth of a byte per pixel and level); the
summed-area tables are rebuilt from the raw maps for the boxes' sums, a chunk at a time too. Otsu's levels need
every map's histogram first: the maps are normalised twice (histograms, then masks), which costs a little time
on the device and keeps no full-resolution map between the two passes.

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

from camloc.boxes.contours import fraction_cut, outer_boxes, stacked_masks, trace_stacked
from camloc.boxes.levels import histograms, otsu_levels, to_uint8
from camloc.cam import check_finite_maps, normalize_maps
from camloc.runtime.memory import chunks, memory_budget


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
    """One image's maps after the device stage: packed masks (CPU) to trace, and its raw maps (device) from which
    :func:`heat_sums` rebuilds the normalised maps' summed-area tables within ``budget`` bytes."""

    size: tuple[int, int]
    packed: np.ndarray  # (n, H, ⌈W/8⌉) uint8: mask i belongs to map i // per_map
    per_map: int  # masks per map (1, or one per level)
    raw: Tensor  # (k, h, w) raw maps, on the device
    budget: int  # bytes the tables may take at once


def stage_bytes(size: tuple[int, int], per_map: int) -> int:
    """Bytes one map holds at its peak in :func:`device_maps`, per full-resolution pixel: the float32 map and its
    upsampling's float32 intermediate, the ``uint8`` map, the int64 histogram index of a chunk, a mask byte per
    level, and the packing's padded copy and products (three bytes per level)."""
    return size[0] * size[1] * (4 + 4 + 1 + 8 + 4 * per_map)


def table_bytes(size: tuple[int, int]) -> int:
    """Bytes one map holds while :func:`heat_sums` rebuilds its table: float32 map and intermediate, its float64
    copy, two cumulative sums and the padded table."""
    return (size[0] + 1) * (size[1] + 1) * (4 + 4 + 8 * 4)


def device_maps(raw_maps: Sequence[Tensor], sizes: Sequence[tuple[int, int]], levels: Sequence[float] | None,
                budget: int | None = None) -> list[DeviceMaps]:
    """Normalise each image's raw maps ``(k, h, w)`` to its ``(H, W)`` on their device and threshold them there.

    ``levels``: fractions ``t`` of each map's max (foreground ``u8 > ⌈t·255⌉ − 1``), or ``None`` for Otsu's
    level of each map (histograms counted on the device; the levels themselves, 256 float64 steps for all
    maps of all images at once, computed exactly as OpenCV on the CPU). Images of one size (and map grid) are
    processed together, in chunks of maps that fit ``budget`` bytes (default: the device's
    :func:`~camloc.runtime.memory.memory_budget`).
    """
    groups: dict[tuple[int, ...], list[int]] = {}  # by image size and map grid
    for index, size in enumerate(sizes):
        groups.setdefault((*size, *raw_maps[index].shape[-2:]), []).append(index)
    device = raw_maps[0].device if len(raw_maps) else torch.device("cpu")
    budget = memory_budget(device, budget)
    per_map = 1 if levels is None else len(levels)
    stacked, spans = {}, {}
    for key, members in groups.items():
        stacked[key] = torch.cat([raw_maps[i] for i in members])
        check_finite_maps(stacked[key])
        spans[key] = list(chunks(len(stacked[key]), stage_bytes(key[:2], per_map), budget))

    def quantised(key: tuple[int, ...], span: slice) -> Tensor:
        return to_uint8(normalize_maps(stacked[key][span], key[:2]))

    if levels is None:  # every map's Otsu level in one pass over all histograms
        order = list(groups)
        counts = [histograms(quantised(key, span)) for key in order for span in spans[key]]
        otsu = torch.from_numpy(otsu_levels(np.concatenate(counts) if counts else np.zeros((0, 256), np.int64)))
        bounds = np.cumsum([0] + [len(stacked[key]) for key in order])
        cuts = {key: otsu[a:b].view(-1, 1) for key, a, b in zip(order, bounds[:-1], bounds[1:])}
    else:
        fixed = torch.tensor([fraction_cut(t) for t in levels]).view(1, -1)
        cuts = {key: fixed.expand(len(stacked[key]), -1) for key in groups}
    out: list[DeviceMaps | None] = [None] * len(sizes)
    for key, members in groups.items():
        size = key[:2]
        parts = []
        for span in spans[key]:
            u8 = quantised(key, span)
            masks = u8[:, None] > cuts[key][span].to(u8.device, torch.int16)[:, :, None, None]
            parts.append(pack(masks.reshape(-1, *size)))
            del u8, masks
        packed = np.concatenate(parts) if parts else np.zeros((0, *size[:1], -(-size[1] // 8)), np.uint8)
        start = 0
        for i in members:
            count = len(raw_maps[i])
            out[i] = DeviceMaps(size, packed[start * per_map:(start + count) * per_map], per_map, raw_maps[i],
                                budget)
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


def heat_sums(maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Σ m over each box, Σ m over its whole map)`` of the normalised maps ``m`` (float64, on the CPU), from
    summed-area tables rebuilt on the maps' device, a chunk of the maps that own boxes at a time."""
    inside, total = np.zeros(len(owner)), np.zeros(len(owner))
    owner = np.asarray(owner, dtype=np.int64)
    xywh = np.asarray(xywh, dtype=np.int64).reshape(-1, 4)
    used = np.unique(owner)
    for span in chunks(len(used), table_bytes(maps.size), maps.budget):
        chosen = used[span]
        rows = np.flatnonzero(np.isin(owner, chosen))
        heat = normalize_maps(maps.raw[torch.as_tensor(chosen, device=maps.raw.device)], maps.size)
        tables = torch.zeros(len(chosen), maps.size[0] + 1, maps.size[1] + 1, dtype=torch.float64,
                             device=heat.device)
        tables[:, 1:, 1:] = heat.double().cumsum(-1).cumsum(-2)
        del heat
        k = torch.as_tensor(np.searchsorted(chosen, owner[rows]), device=tables.device)
        x, y, w, h = (torch.as_tensor(c, device=tables.device) for c in xywh[rows].T)
        sums = (tables[k, y + h, x + w] - tables[k, y, x + w]) - (tables[k, y + h, x] - tables[k, y, x])
        inside[rows] = sums.cpu().numpy()
        total[rows] = tables[k, -1, -1].cpu().numpy()
    return inside, total
