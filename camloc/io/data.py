"""COCO data from an instances JSON and an image folder.

* :class:`CocoImages` — each listed image, for inference (``python -m eval``).
* :class:`CocoMultiLabel` — image-level multi-label targets: class k is present iff the image
  has a non-crowd annotation of it (weak supervision: no boxes are used).
* :class:`CocoCrops` — one sample per non-crowd box: the box crop with its single label (the
  course's ``coco_80_dataset.py`` setting), for comparison.

Annotations are checked once by :class:`camloc.evaluation.GroundTruth` (ids, boxes, ...) and
:func:`check_image_files` (file names); a problem is a :class:`DataError` with a one-line message. An
image that fails to decode for any reason (:class:`camloc.io.images.ImageError`) never stops a run:
it yields an :class:`Unreadable` record that :func:`collate_skipping` sets aside and lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from camloc.evaluation import EvaluationError, GroundTruth
from camloc.io.images import ImageError, load_image
from camloc.models.classes import COCO_CATEGORY_IDS, COCO_NAMES


class DataError(ValueError):
    """A dataset that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class Unreadable:
    """An image that could not be decoded: its file name and the one-line reason."""

    file_name: str
    reason: str


def check_image_files(folder: str | Path, images: list[dict[str, Any]], ann_name: str) -> None:
    """Every image entry has a ``file_name`` that is a relative path inside ``folder`` (no absolute
    path, no ``..``) and that file exists; anything else is a :class:`DataError` naming the entry."""
    folder = Path(folder)
    missing = []
    for index, image in enumerate(images):
        name = image.get("file_name")
        parts = Path(name).parts if isinstance(name, str) else ()
        if not parts or "\0" in name or Path(name).is_absolute() or ".." in parts:
            raise DataError(f"{ann_name}: image #{index} (id {image.get('id')}) has file_name {name!r}; expected a "
                            "file name relative to the image folder, such as 000000000139.jpg")
        path = folder / name
        try:
            present = path.is_file()
        except OSError as exc:
            raise DataError(f"{ann_name}: image #{index} has file_name {name!r}, not a usable path "
                            f"({exc.strerror})") from None
        if not present:
            missing.append(name)
    if missing:
        raise DataError(f"{len(missing)} of {len(images)} images listed in {ann_name} are not in {folder} "
                        f"(e.g. {missing[0]}); check the image folder and the annotation file")


class CocoImages(Dataset):
    """``(image_id, RGB PIL image or None, error message or None)`` for each listed image.

    Decoding happens in the DataLoader's workers; an unreadable image yields ``None`` and its
    one-line reason instead of stopping the run.
    """

    def __init__(self, folder: str | Path, images: list[dict[str, Any]]):
        self.folder = Path(folder)
        self.images = images

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


def collate_skipping(batch: list) -> tuple[Any, list[Unreadable]]:
    """Collate the readable samples; returns ``(batch or None, the unreadable samples)``."""
    good = [sample for sample in batch if not isinstance(sample, Unreadable)]
    return (default_collate(good) if good else None), [s for s in batch if isinstance(s, Unreadable)]


def train_transform(size: int) -> Callable:
    """Random resized crop (scale 0.7–1: mild, so that labelled objects are rarely cropped out),
    horizontal flip, mild colour jitter — all on ``uint8`` pixels: a sample stays ``uint8 (3, S, S)``
    (a quarter of float32's bytes through the loader's shared memory) and is normalised on the device
    (:func:`camloc.io.preprocess.normalise`)."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2)])


def eval_transform(size: int) -> Callable:
    """Square resize (as the Localizer does), ``uint8`` out (normalised on the device)."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


class CocoIndex:
    """An instances file: its categories (contiguous order) and, per image, its non-crowd boxes.

    ``truth`` is the checked :class:`~camloc.evaluation.GroundTruth` of the file.
    """

    def __init__(self, ann_file: str | Path, images_dir: str | Path):
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} does not exist")
        try:
            self.truth = GroundTruth(self.ann_file)
        except EvaluationError as exc:
            raise DataError(str(exc)) from None
        ids = self.truth.category_ids.tolist()
        self.category_ids: list[int] = ids
        self.class_names: list[str] = [self.truth.category_names[i] for i in ids]
        if tuple(ids) == COCO_CATEGORY_IDS:
            self.class_names = list(COCO_NAMES)
        index_of = {cid: k for k, cid in enumerate(ids)}
        self.images = sorted(self.truth.data["images"], key=lambda im: im["id"])
        self.boxes: dict[int, list[tuple[int, list[float]]]] = {im["id"]: [] for im in self.images}
        truth = self.truth
        for image_id, category, box, crowd in zip(truth.ann_image.tolist(), truth.ann_category.tolist(),
                                                  truth.ann_bbox.tolist(), truth.ann_crowd.tolist()):
            if not crowd and image_id in self.boxes and category in index_of:
                self.boxes[image_id].append((index_of[category], box))
        check_image_files(self.images_dir, self.images, self.ann_file.name)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


class CocoMultiLabel(Dataset):
    """``(image tensor, multi-hot target (K,))`` per image; :class:`Unreadable` if it cannot be read."""

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

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | Unreadable:
        info = self.images[i]
        try:
            image = load_image(self.index.images_dir / info["file_name"])
        except ImageError as exc:
            return Unreadable(info["file_name"], str(exc))
        target = torch.zeros(self.index.num_classes)
        for k, _ in self.index.boxes[info["id"]]:
            target[k] = 1.0
        return self.transform(image), target


class CocoCrops(Dataset):
    """``(crop tensor, class index)`` per non-crowd box of at least ``min_size`` pixels a side
    (:class:`Unreadable` if its image cannot be read)."""

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

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        info, k, (x, y, w, h) = self.items[i]
        try:
            image = load_image(self.index.images_dir / info["file_name"])
        except ImageError as exc:
            return Unreadable(info["file_name"], str(exc))
        return self.transform(image.crop((int(x), int(y), int(x + w + 0.5), int(y + h + 0.5)))), k
