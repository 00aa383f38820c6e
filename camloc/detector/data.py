"""Training samples of a detector: each image of a COCO instances file (true boxes or pseudo-labels) with its
non-crowd boxes, as ``uint8`` pixels and torchvision's detection target."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from camloc.io.data import CocoIndex, Unreadable
from camloc.io.images import ImageError, load_image
from camloc.io.preprocess import pixels_of

#: Boxes narrower or lower than this (pixels) are left out of the targets (torchvision refuses empty boxes).
MIN_BOX_SIDE = 1.0


class DetectionSamples(Dataset):
    """``(uint8 (3, H, W) pixels, {"boxes": (n, 4) xyxy float32, "labels": (n,) int64})`` per image of ``index``
    (the first ``limit``), or :class:`~camloc.io.data.Unreadable`; label ``k + 1`` is the index's ``k``-th
    category (0 is the background). ``train``: mirrored at random (half the images, boxes mirrored too). An
    image without boxes is a sample too: a negative."""

    def __init__(self, index: CocoIndex, train: bool, limit: int | None = None):
        self.index, self.train = index, train
        self.images = index.images[:limit]

    def __len__(self) -> int:
        return len(self.images)

    def boxes_of(self, image_id: int) -> tuple[Tensor, Tensor]:
        """``(xyxy (n, 4) float32, labels (n,) int64)`` of an image's boxes with both sides ≥ ``MIN_BOX_SIDE``."""
        found = self.index.boxes[image_id]
        xywh = torch.tensor([box for _, box in found], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([k + 1 for k, _ in found], dtype=torch.int64)
        keep = (xywh[:, 2:] >= MIN_BOX_SIDE).all(1)
        xywh, labels = xywh[keep], labels[keep]
        return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), labels

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | Unreadable:
        info = self.images[i]
        try:
            pixels = pixels_of(load_image(self.index.images_dir / info["file_name"]))
        except ImageError as exc:
            return Unreadable(info["file_name"], str(exc))
        boxes, labels = self.boxes_of(info["id"])
        if self.train and bool(torch.rand(()) < 0.5):
            width = pixels.shape[-1]
            pixels = pixels.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        return pixels, {"boxes": boxes, "labels": labels}


def collate_detection(batch: list) -> tuple[tuple[list[Tensor], list[dict[str, Tensor]]] | None, list[Unreadable]]:
    """``((images, targets) or None, unreadable samples)``: images stay a list (their sizes differ)."""
    good: list[Any] = [sample for sample in batch if not isinstance(sample, Unreadable)]
    readable = ([image for image, _ in good], [target for _, target in good]) if good else None
    return readable, [sample for sample in batch if isinstance(sample, Unreadable)]
