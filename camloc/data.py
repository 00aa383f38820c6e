"""COCO data: the images of an instances file, for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from camloc.images import ImageError, load_image


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
