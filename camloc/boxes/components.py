"""Connected components of many binary masks at once, on the masks' device: their bounding boxes.

:func:`component_boxes` labels every mask of a ``(N, H, W)`` stack in one loop of whole-stack tensor
operations (no Python work per mask, pixel or component), so a GPU boxes thousands of small masks —
every (image, class, level) of a batch — in a few milliseconds. Each round:

1. *propagate*: every foreground pixel takes the smallest label in its neighbourhood (8- or
   4-connected: a 3×3 or a cross-shaped min-pool);
2. *hook*: the pixel its old label points to takes that smaller label too (``scatter_reduce``
   with ``amin``), which merges whole label trees instead of one pixel a round;
3. *jump*: every label is replaced by its label's label, twice (pointer jumping).

Labels start as each pixel's raster index and only ever fall to the index of another pixel of the
same component, so at the fixed point every component carries the raster index of its first pixel.
The rounds needed grow with the logarithm of a component's extent, not its area. The boxes are then
per-label min/max reductions of the pixel coordinates. On the CPU, :func:`component_boxes` asks
OpenCV's ``connectedComponentsWithStats`` instead (one call for all masks, ~50× faster there than
the tensor rounds); the two give the same boxes in the same order (tested).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Labels are float32 raster indices (min-pooling runs on floats on every device): exact below 2**24.
MAX_MASK_PIXELS = 2**24


def _neighbourhood_min(labels: Tensor, connectivity: int) -> Tensor:
    """Min of each pixel's closed neighbourhood (3×3, or the 4-neighbour cross); outside the mask: ∞."""
    negated = -labels.unsqueeze(1)
    if connectivity == 8:
        return -F.max_pool2d(negated, 3, stride=1, padding=1).squeeze(1)
    vertical = F.max_pool2d(negated, (3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(negated, (1, 3), stride=1, padding=(0, 1))
    return -torch.maximum(vertical, horizontal).squeeze(1)


def component_labels(masks: Tensor, connectivity: int = 8) -> Tensor:
    """``(N, H, W)`` float32 labels of the foreground pixels of boolean ``masks (N, H, W)``: the raster
    index (``y·W + x``) of the first pixel of the component each belongs to; background pixels get
    ``H·W``. ``connectivity`` is 8 (diagonal neighbours join) or 4."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    num, height, width = masks.shape
    pixels = height * width
    if pixels >= MAX_MASK_PIXELS:
        raise ValueError(f"masks of {height}×{width} pixels are too large to label (limit {MAX_MASK_PIXELS:,})")
    masks = masks.bool()
    background = float(pixels)
    raster = torch.arange(pixels, device=masks.device, dtype=torch.float32).view(1, height, width)
    labels = torch.where(masks, raster, background)
    if num == 0 or not bool(masks.any()):
        return labels
    # one spare slot per mask (index H·W) holds the background label, so lookups need no masking
    offsets = torch.arange(num, device=masks.device).view(num, 1, 1) * (pixels + 1)
    foreground = masks.reshape(-1)

    def table_of(current: Tensor) -> Tensor:
        return F.pad(current.reshape(num, pixels), (0, 1), value=background).reshape(-1)

    while True:
        smallest = torch.where(masks, _neighbourhood_min(labels, connectivity), background)
        table = table_of(labels)
        pointer = (labels.long() + offsets).reshape(-1)[foreground]
        table.scatter_reduce_(0, pointer, smallest.reshape(-1)[foreground], "amin")  # hook
        merged = torch.minimum(table.view(num, pixels + 1)[:, :pixels].reshape_as(labels), smallest)
        for _ in range(2):  # pointer jumping
            merged = table_of(merged)[(merged.long() + offsets).reshape(-1)].view_as(labels)
        if torch.equal(merged, labels):
            return labels
        labels = merged


def _boxes_from_labels(masks: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(mask index, [x0, y0, x1, y1])`` per component from :func:`component_labels`, by per-label min/max."""
    num, height, width = masks.shape
    pixels, device = height * width, masks.device
    foreground = masks.reshape(-1)
    slot = (labels.long() + torch.arange(num, device=device).view(num, 1, 1) * pixels).reshape(-1)[foreground]
    ys = torch.arange(height, device=device).view(1, height, 1).expand(num, height, width).reshape(-1)[foreground]
    xs = torch.arange(width, device=device).view(1, 1, width).expand(num, height, width).reshape(-1)[foreground]
    size = num * pixels
    low_x = torch.full((size,), width, device=device).scatter_reduce_(0, slot, xs, "amin")
    low_y = torch.full((size,), height, device=device).scatter_reduce_(0, slot, ys, "amin")
    high_x = torch.full((size,), -1, device=device).scatter_reduce_(0, slot, xs, "amax")
    high_y = torch.full((size,), -1, device=device).scatter_reduce_(0, slot, ys, "amax")
    area = torch.zeros(size, dtype=torch.long, device=device).scatter_add_(0, slot, torch.ones_like(slot))
    roots = torch.nonzero(high_x >= 0).flatten()
    return roots // pixels, torch.stack([low_x[roots], low_y[roots], high_x[roots], high_y[roots]], 1), area[roots]


def _boxes_with_opencv(masks: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    """The same boxes from one ``cv2.connectedComponentsWithStats`` call on the masks stacked with an empty row
    after each (no component crosses from one mask into the next): faster than tensor rounds on a CPU."""
    num, height, width = masks.shape
    stacked = np.zeros((num, height + 1, width), np.uint8)
    stacked[:, :height] = masks.numpy()
    _, _, stats, _ = cv2.connectedComponentsWithStats(stacked.reshape(-1, width), connectivity=connectivity,
                                                      ltype=cv2.CV_32S)
    x, y, w, h, area = (torch.from_numpy(stats[1:, i].astype(np.int64)) for i in range(5))
    owner = y // (height + 1)
    y = y - owner * (height + 1)
    return owner, torch.stack([x, y, x + w - 1, y + h - 1], 1), area


def component_boxes(masks: Tensor, connectivity: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Bounding boxes of every connected component of every mask of ``masks (N, H, W)``.

    Returns ``(mask index (n,), boxes (n, 4) [x0, y0, x1, y1] with inclusive corners, pixel count (n,))``,
    int64 on the masks' device, sorted by mask, then box (``x0, y0, x1, y1``), then pixel count: the same
    rows in the same order from :func:`component_labels` (any device but the CPU) and from OpenCV (CPU).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    masks = masks.bool()
    if masks.numel() == 0:
        none = torch.zeros(0, dtype=torch.long, device=masks.device)
        return none, none.view(0, 1).expand(0, 4), none
    if masks.device.type == "cpu":
        return sort_boxes(*_boxes_with_opencv(masks, connectivity))
    return sort_boxes(*_boxes_from_labels(masks, component_labels(masks, connectivity)))


def sort_boxes(owner: Tensor, boxes: Tensor, area: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ordered by ``owner``, then by the box's ``x0, y0, x1, y1``, then ``area`` (three stable sorts: the
    box as one integer ``((x0·H + y0)·W + x1)·H + y1 < (H·W)²`` fits int64 for masks under 2**24 pixels)."""
    height, width = int(boxes[:, 3].max()) + 1 if len(boxes) else 1, int(boxes[:, 2].max()) + 1 if len(boxes) else 1
    x0, y0, x1, y1 = boxes.unbind(1)
    order = torch.sort(area, stable=True).indices
    for key in (((x0 * height + y0) * width + x1) * height + y1, owner):
        order = order[torch.sort(key[order], stable=True).indices]
    return owner[order], boxes[order], area[order]
