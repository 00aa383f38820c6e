"""Greedy NMS within many small groups at once (every (image, class) of a batch), on the boxes' device.

``torchvision.ops.batched_nms`` either offsets the groups' coordinates apart and runs one NMS over all
boxes — on a GPU its kernel builds an ``n × n/64`` bit matrix and walks it on the host, which for the
tens of thousands of boxes of a batch is hundreds of MB copied back — or, above a few thousand boxes,
loops over the groups in Python. Here the groups are padded side by side, ``(G, M, M)`` IoU matrices
are computed at once, and greedy NMS is solved as a fixed point (Cluster-NMS, Zheng et al. 2021):

``keep_j = ¬∃ i < j: keep_i ∧ IoU(i, j) > t`` (boxes ranked by score within their group),

starting from all kept; each round is a few whole-batch tensor operations, and the rounds needed are
the length of the longest chain of suppressions (two or three in practice), not the number of boxes.
The result is exactly greedy NMS's (IoU as ``torchvision.ops.nms`` computes it, in float64; tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Elements of the padded IoU matrices handled at once (groups are split into chunks below it).
CHUNK_ELEMENTS = 1 << 24


def _pairwise_iou(boxes: Tensor) -> Tensor:
    """``(G, M, M)`` IoU of ``(G, M, 4)`` corner boxes, ``inter / (area_i + area_j − inter)`` in their dtype."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    area = (x1 - x0) * (y1 - y0)

    def overlap(low: Tensor, high: Tensor) -> Tensor:
        return (torch.minimum(high[:, :, None], high[:, None, :]) - torch.maximum(low[:, :, None], low[:, None, :])
                ).clamp(min=0)

    inter = overlap(x0, x1) * overlap(y0, y1)
    return inter / (area[:, :, None] + area[:, None, :] - inter)


def _keep_padded(boxes: Tensor, valid: Tensor, iou: float) -> Tensor:
    """Greedy NMS of ``(G, M, 4)`` boxes ranked best first (``valid (G, M)`` marks real ones) → keep ``(G, M)``."""
    suppresses = torch.triu(_pairwise_iou(boxes) > iou, diagonal=1) & valid[:, :, None] & valid[:, None, :]
    keep = valid.clone()
    while True:
        updated = valid & ~(suppresses & keep[:, :, None]).any(1)
        if torch.equal(updated, keep):
            return keep
        keep = updated


def grouped_nms(corners: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """Indices of the boxes greedy NMS keeps within each group, ordered by group, then score (best first).

    ``corners (n, 4)``: ``[x0, y0, x1, y1]``; ``scores (n,)``; ``groups (n,)`` integer group ids; a box is
    dropped when a better-scored box of its group overlaps it with IoU ``> iou``. Ties in score keep the
    input order.
    """
    device = corners.device
    if len(corners) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(-scores, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, best first
    ordered_groups = groups[order]
    starts = torch.ones(len(order), dtype=torch.bool, device=device)
    starts[1:] = ordered_groups[1:] != ordered_groups[:-1]
    group_index = torch.cumsum(starts, 0) - 1
    first = torch.nonzero(starts).flatten()
    counts = torch.diff(torch.cat([first, torch.tensor([len(order)], device=device)]))
    rank = torch.arange(len(order), device=device) - first[group_index]
    by_size = torch.sort(counts, descending=True, stable=True).indices
    kept = torch.zeros(len(order), dtype=torch.bool, device=device)
    sizes = counts[by_size].tolist()
    start = 0
    while start < len(sizes):  # chunks of groups whose padded matrices fit CHUNK_ELEMENTS
        width = sizes[start]
        stop = start + max(1, CHUNK_ELEMENTS // max(width * width, 1))
        chunk = by_size[start:stop]
        member = torch.isin(group_index, chunk)
        slot = torch.full((int(group_index.max()) + 1,), -1, dtype=torch.long, device=device)
        slot[chunk] = torch.arange(len(chunk), device=device)
        rows, cols = slot[group_index[member]], rank[member]
        padded = torch.zeros(len(chunk), width, 4, dtype=corners.dtype, device=device)
        padded[rows, cols] = corners[order[member]]
        valid = torch.zeros(len(chunk), width, dtype=torch.bool, device=device)
        valid[rows, cols] = True
        kept[torch.nonzero(member).flatten()] = _keep_padded(padded, valid, iou)[rows, cols]
        start = stop
    return order[kept]
