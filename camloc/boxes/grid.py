"""The evidence recipes' box stage for many maps at once, at a resolution matched to the feature grid.

A class map is an ``h × w`` grid (14×14 for ResNet-50 at 448 px); upsampled to a 640×480 photo it
holds no more information than at a few times the grid, but costs ~400× the pixels. Here every map
of a batch — any images, any classes — is upsampled to ``(scale·h, scale·w)`` (``scale`` = 4: 56×56
for a 14×14 grid), normalised (ReLU, min-max), cut at the recipe's levels (fractions of the max, or
Otsu's level per map), its connected components boxed (:func:`camloc.boxes.components.component_boxes`),
each box scored by the share of the map's evidence it holds
(:func:`camloc.boxes.proposals.evidence_of`, from float64 summed-area tables), kept by greedy NMS within
each (image, class) for the whole batch at once (:func:`camloc.boxes.nms.grouped_nms`), and scaled to
the image: grid cell column ``i`` covers image columns ``[i·W/(scale·w), (i+1)·W/(scale·w))``.

All of it is whole-batch tensor work on the maps' device: the host's Python work is the same for one
map or ten thousand. The regions are 8-connected components (the course recipe's contours are the
outer borders of the same 8-connected regions; a region nested in another's hole adds its own box).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from camloc.boxes.components import component_boxes
from camloc.boxes.levels import thresholds, to_uint8
from camloc.boxes.nms import grouped_nms
from camloc.boxes.proposals import evidence_of
from camloc.cam import check_finite_maps, normalize_maps
from camloc.runtime.memory import chunks, memory_budget
from camloc.runtime.profiling import stage


@dataclass(frozen=True)
class GridBoxes:
    """Scored boxes of many maps, on the maps' device: row ``i`` belongs to map ``map_index[i]``."""

    map_index: Tensor  # (n,) int64
    xywh: Tensor  # (n, 4) float64, [x, y, w, h] in image pixels
    score: Tensor  # (n,) float64


def summed_area_tables(heat: Tensor) -> Tensor:
    """``(N, H+1, W+1)`` float64 tables ``I[y, x] = Σ heat[:y, :x]``."""
    tables = torch.zeros(heat.shape[0], heat.shape[1] + 1, heat.shape[2] + 1, dtype=torch.float64,
                         device=heat.device)
    tables[:, 1:, 1:] = heat.double().cumsum(-1).cumsum(-2)
    return tables


def table_sums(tables: Tensor, owner: Tensor, xywh: Tensor) -> Tensor:
    """``Σ`` over each integer box ``[x, y, w, h]`` of map ``owner`` from its summed-area table."""
    x, y, w, h = xywh.unbind(1)
    return (tables[owner, y + h, x + w] - tables[owner, y, x + w]) - (tables[owner, y + h, x] - tables[owner, y, x])


def largest_per_map(owner: Tensor, area: Tensor) -> Tensor:
    """Indices of the first row of largest ``area`` of each owner (rows sorted by owner)."""
    order = torch.sort(-area, stable=True).indices
    order = order[torch.sort(owner[order], stable=True).indices]
    first = torch.ones(len(order), dtype=torch.bool, device=owner.device)
    first[1:] = owner[order][1:] != owner[order][:-1]
    return torch.sort(order[first]).values


def grid_bytes(shape: tuple[int, int], per_map: int) -> int:
    """Bytes one map holds at its peak in :func:`grid_boxes`, per pixel of the traced grid: the float32 map and
    its upsampling's intermediate, its ``uint8`` copy and histogram index, and per level a mask byte and the
    connected components' labels and their neighbours' (int64, three copies), plus its float64 summed-area table."""
    return shape[0] * shape[1] * (4 + 4 + 1 + 8 + per_map * (1 + 3 * 8) + 8 * 3)


def grid_boxes(raw_maps: Tensor, probs: Tensor, sizes: Tensor, group: Tensor, scale: int,
               levels: Sequence[float] | None, mode: str = "all", nms_iou: float = 0.5,
               budget: int | None = None) -> GridBoxes:
    """Scored boxes of raw maps ``(N, h, w)`` (see the module docstring).

    ``probs (N,)``: each map's class probability (``score = p · evidence``); ``sizes (N, 2)``: its image's
    ``(H, W)``; ``group (N,)``: maps of one group share NMS (one per image and class; non-decreasing);
    ``levels``: fractions of the max (``None``: Otsu); ``mode="largest"``: only the component with the most
    pixels per map and level. A map with no region gets the whole image. Rows are sorted by group, best score
    first. The maps are boxed a chunk at a time within ``budget`` bytes (default: the device's
    :func:`~camloc.runtime.memory.memory_budget`), a group never split between chunks: the same boxes as all
    at once.
    """
    shape = (raw_maps.shape[-2] * scale, raw_maps.shape[-1] * scale)
    per_map = 1 if levels is None else len(levels)
    bounds = [0]
    groups = group.cpu()
    for span in chunks(len(raw_maps), grid_bytes(shape, per_map), memory_budget(raw_maps.device, budget)):
        end = span.stop
        while end < len(raw_maps) and groups[end] == groups[end - 1]:  # a group stays in one chunk
            end += 1
        if end > bounds[-1]:
            bounds.append(end)
    if len(bounds) == 2 or len(raw_maps) == 0:
        return _grid_boxes(raw_maps, probs, sizes, group, scale, levels, mode, nms_iou)
    parts = [_grid_boxes(raw_maps[a:b], probs[a:b], sizes[a:b], group[a:b], scale, levels, mode, nms_iou)
             for a, b in itertools.pairwise(bounds)]
    return GridBoxes(torch.cat([p.map_index + a for p, a in zip(parts, bounds)]),
                     torch.cat([p.xywh for p in parts]), torch.cat([p.score for p in parts]))


def _grid_boxes(raw_maps: Tensor, probs: Tensor, sizes: Tensor, group: Tensor, scale: int,
                levels: Sequence[float] | None, mode: str, nms_iou: float) -> GridBoxes:
    """:func:`grid_boxes` of maps that fit in memory at once."""
    device = raw_maps.device
    empty = GridBoxes(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 4, dtype=torch.float64,
                      device=device), torch.zeros(0, dtype=torch.float64, device=device))
    if len(raw_maps) == 0:
        return empty
    check_finite_maps(raw_maps)
    num, height, width = raw_maps.shape
    shape = (height * scale, width * scale)
    heat = normalize_maps(raw_maps, shape)
    u8 = to_uint8(heat)
    cuts = thresholds(u8, levels)
    per_map = cuts.shape[1]
    masks = u8[:, None] > cuts.to(torch.int16)[:, :, None, None]
    with stage("connected components"):
        tile, corners, area = component_boxes(masks.reshape(num * per_map, *shape))
    if mode == "largest" and len(tile):
        keep = largest_per_map(tile, area)
        tile, corners = tile[keep], corners[keep]
    owner = tile // per_map
    xywh = torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2] + 1], 1)
    missing = torch.ones(num, dtype=torch.bool, device=device)
    missing[owner] = False
    bare = torch.nonzero(missing).flatten()
    owner = torch.cat([owner, bare])
    whole = torch.tensor([0, 0, shape[1], shape[0]], device=device)
    xywh = torch.cat([xywh, whole.expand(len(bare), 4)])
    tables = summed_area_tables(heat)
    score = evidence_of(table_sums(tables, owner, xywh), tables[owner, -1, -1], xywh) * probs.double()[owner]
    corners = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).double()
    with stage("NMS"):
        kept = grouped_nms(corners, score, group[owner], float(nms_iou))
    owner, xywh, score = owner[kept], xywh[kept].double(), score[kept]
    height_px, width_px = sizes[owner].double().unbind(1)
    stretch = torch.stack([width_px / shape[1], height_px / shape[0]] * 2, 1)
    return GridBoxes(owner, xywh * stretch, score)
