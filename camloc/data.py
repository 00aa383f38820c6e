"""COCO data from an instances JSON and an image folder.

* :class:`CocoImages` — each listed image, for inference (``python -m eval``).
* :class:`CocoMultiLabel` — image-level multi-label targets: class k is present iff the image
  has a non-crowd annotation of it (weak supervision: no boxes are used).
* :class:`CocoCrops` — one sample per non-crowd box: the box crop with its single label (the
  course's ``coco_80_dataset.py`` setting), for comparison.

An image that fails to decode yields ``None``; :func:`collate_skipping` drops it and counts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from camloc.classes import COCO_CATEGORY_IDS, COCO_NAMES
from camloc.images import ImageError, load_image


class DataError(ValueError):
    """A dataset that cannot be used; the message says what is wrong."""


class CocoImages(Dataset):
    """``(image_id, RGB PIL image or None, error message or None)`` for each listed image.

    Decoding happens in the DataLoader's workers; an unreadable image yields ``None`` and its
    one-line reason instead of stopping the run.
    """

    def __init__(self, folder: str | Path, images: list[dict[str, Any]]):
        self.folder = Path(folder)
        self.images = images

    def missing(self) -> list[str]:
        """File names listed in the annotations that are not in the folder."""
        return [im["file_name"] for im in self.images if not (self.folder / im["file_name"]).is_file()]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | None, str | None]:
        info = self.images[index]
        try:
            return info["id"], load_image(self.folder / info["file_name"]), None
        except ImageError as exc:
            return info["id"], None, str(exc)


def as_list(batch: list) -> list:
    """DataLoader ``collate_fn`` that keeps samples as they are (PIL images of different sizes)."""
    return batch


def collate_skipping(batch: list) -> tuple[Any, int]:
    """Collate the readable samples; returns ``(batch or None, number of unreadable samples)``."""
    good = [sample for sample in batch if sample is not None]
    return (default_collate(good) if good else None), len(batch) - len(good)


def train_transform(size: int, mean: list[float], std: list[float]) -> Callable:
    """Random resized crop (scale 0.7–1: mild, so that labelled objects are rarely cropped out),
    horizontal flip, mild colour jitter, normalise."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def eval_transform(size: int, mean: list[float], std: list[float]) -> Callable:
    """Square resize (as the Localizer does), normalise."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class CocoIndex:
    """An instances file: its categories (contiguous order) and, per image, its non-crowd boxes."""

    def __init__(self, ann_file: str | Path, images_dir: str | Path):
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} does not exist")
        if not self.ann_file.is_file():
            raise DataError(f"annotation file {self.ann_file} does not exist")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.ann_file} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(f"{self.ann_file} is not a COCO instances file (images, annotations, categories)")
        if not data.get("categories"):
            raise DataError(f"{self.ann_file} has no categories; a classifier needs at least one")
        ids = sorted(int(c["id"]) for c in data["categories"])
        names = {int(c["id"]): c["name"] for c in data["categories"]}
        self.category_ids: list[int] = ids
        self.class_names: list[str] = [names[i] for i in ids]
        if tuple(ids) == COCO_CATEGORY_IDS:
            self.class_names = list(COCO_NAMES)
        index_of = {cid: k for k, cid in enumerate(ids)}
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.boxes: dict[int, list[tuple[int, list[float]]]] = {im["id"]: [] for im in self.images}
        for ann in data["annotations"]:
            if not ann.get("iscrowd", 0) and ann["image_id"] in self.boxes and ann["category_id"] in index_of:
                self.boxes[ann["image_id"]].append((index_of[ann["category_id"]], ann["bbox"]))
        missing = [im["file_name"] for im in self.images if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.images)} images of {self.ann_file.name} are not in "
                            f"{self.images_dir} (e.g. {missing[0]})")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


class CocoMultiLabel(Dataset):
    """``(image tensor, multi-hot target (K,))`` per image; ``None`` if the image cannot be read."""

    def __init__(self, index: CocoIndex, transform: Callable, limit: int | None = None):
        self.index, self.transform = index, transform
        self.images = index.images[:limit]

    def targets(self) -> Tensor:
        """``(N, K)`` multi-hot labels of every image, in dataset order."""
        out = torch.zeros(len(self.images), self.index.num_classes)
        for i, im in enumerate(self.images):
            for k, _ in self.index.boxes[im["id"]]:
                out[i, k] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        info = self.images[i]
        try:
            image = load_image(self.index.images_dir / info["file_name"])
        except ImageError:
            return None
        target = torch.zeros(self.index.num_classes)
        for k, _ in self.index.boxes[info["id"]]:
            target[k] = 1.0
        return self.transform(image), target


class CocoCrops(Dataset):
    """``(crop tensor, class index)`` per non-crowd box of at least ``min_size`` pixels a side."""

    def __init__(self, index: CocoIndex, transform: Callable, limit: int | None = None, min_size: float = 8.0):
        self.index, self.transform = index, transform
        self.items = [(im, k, box) for im in index.images[:limit] for k, box in index.boxes[im["id"]]
                      if box[2] >= min_size and box[3] >= min_size]

    def targets(self) -> Tensor:
        """``(N, K)`` one-hot labels of every crop, in dataset order."""
        out = torch.zeros(len(self.items), self.index.num_classes)
        out[torch.arange(len(self.items)), torch.tensor([k for _, k, _ in self.items], dtype=torch.long)] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        info, k, (x, y, w, h) = self.items[i]
        try:
            image = load_image(self.index.images_dir / info["file_name"])
        except ImageError:
            return None
        return self.transform(image.crop((int(x), int(y), int(x + w + 0.5), int(y + h + 0.5)))), k
