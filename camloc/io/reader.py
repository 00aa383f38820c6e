"""Reading a split's images for a long run: loader workers hand over ``uint8`` pixels or JPEG bytes.

Nothing crosses from a loader worker to the main process but tensors (shared memory) and small
records — never a pickled PIL image. Two ways, per image:

* *decoded in the worker* (the default on a CPU, and for any file the device cannot take): the
  worker decodes with :func:`camloc.io.images.load_image` (EXIF rotation, CMYK/greyscale/16-bit/alpha,
  every check) into ``uint8 (3, H, W)`` pixels;
* *decoded on the device* (``device_decode``, the default on a GPU): the worker reads the file's
  bytes and its header only; a baseline or progressive JPEG in RGB or greyscale whose data ends with
  an end-of-image marker is handed over as bytes, and :func:`decode_batch` decodes the whole batch
  with ``torchvision.io.decode_jpeg(..., device=...)`` (nvJPEG on a GPU) and applies its EXIF
  orientation there. Anything else — CMYK, PNG, a truncated or undecodable JPEG — is decoded by
  ``load_image`` (in the worker, or in the main process when the device decoder refuses the data),
  so an unreadable file is always one listed, skipped image with ``load_image``'s one-line reason.

Each record also carries the file's ``(size, mtime)`` as read, which ``python -m eval --resume``
compares to refuse results computed from other files.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from camloc.io.images import MAX_IMAGE_PIXELS, ImageError, load_image
from camloc.io.preprocess import pixels_of

#: EXIF tag of the orientation.
ORIENTATION_TAG = 0x0112
#: The JPEG end-of-image marker: a file without it at its end was cut short.
END_OF_IMAGE = b"\xff\xd9"


@dataclass(frozen=True)
class ReadImage:
    """One image as a loader worker hands it over."""

    image_id: int
    name: str  # the file's path, for messages
    pixels: Tensor | None = None  # uint8 (3, H, W), decoded in the worker
    encoded: Tensor | None = None  # uint8 (n,): the JPEG file, to decode on the device
    orientation: int = 1  # EXIF orientation of ``encoded`` (1: upright)
    reason: str | None = None  # why the image cannot be read
    stamp: tuple[int, int] = (-1, -1)  # (size in bytes, mtime in ns) of the file as read
    seconds: float = 0.0  # the worker's time on it


@dataclass(frozen=True)
class ReadBatch:
    """A batch of :class:`ReadImage` (a DataLoader ``collate_fn`` result that pins its tensors)."""

    items: tuple[ReadImage, ...]

    def pin_memory(self) -> ReadBatch:
        return ReadBatch(tuple(replace(item, pixels=None if item.pixels is None else item.pixels.pin_memory(),
                                       encoded=None if item.encoded is None else item.encoded.pin_memory())
                               for item in self.items))


def collate(items: list[ReadImage]) -> ReadBatch:
    return ReadBatch(tuple(items))


def _device_jpeg(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG the device decoder may take (RGB or greyscale, within the pixel
    limit, ending with its end-of-image marker), else ``None``. Reads the header only."""
    if not data.rstrip(b"\0").endswith(END_OF_IMAGE):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            width, height = image.size
            if image.mode not in ("RGB", "L") or not 0 < width * height <= MAX_IMAGE_PIXELS:
                return None
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # not a JPEG, or a header PIL refuses: load_image will say why
        return None
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


class SplitImages(Dataset):
    """``ReadImage`` of each listed image (``{"id", "file_name"}`` entries) of ``folder``."""

    def __init__(self, folder: str | Path, images: Sequence[dict[str, Any]], device_decode: bool = False):
        self.folder = Path(folder)
        self.images = list(images)
        self.device_decode = device_decode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ReadImage:
        start = time.perf_counter()
        info = self.images[index]
        path = self.folder / info["file_name"]
        try:
            stat = os.stat(path)
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        try:
            if self.device_decode and stamp[0] >= 0:
                data = path.read_bytes()
                orientation = _device_jpeg(data)
                if orientation is not None:
                    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    return ReadImage(info["id"], str(path), encoded=encoded, orientation=orientation, stamp=stamp,
                                     seconds=time.perf_counter() - start)
                pixels = pixels_of(load_image(data, str(path)))
            else:
                pixels = pixels_of(load_image(path))
        except (ImageError, OSError) as exc:
            reason = str(exc) if isinstance(exc, ImageError) else f"{path}: cannot read the file ({exc.strerror})"
            return ReadImage(info["id"], str(path), reason=reason, stamp=stamp, seconds=time.perf_counter() - start)
        return ReadImage(info["id"], str(path), pixels=pixels, stamp=stamp, seconds=time.perf_counter() - start)


def orient(pixels: Tensor, orientation: int) -> Tensor:
    """``(3, H, W)`` pixels turned upright from their EXIF ``orientation`` (as ``PIL.ImageOps.exif_transpose``)."""
    flips = {1: (), 2: (-1,), 3: (-1, -2), 4: (-2,)}
    if orientation in flips:
        return pixels.flip(flips[orientation]) if flips[orientation] else pixels
    transposed = pixels.transpose(-1, -2)  # orientation 5: transpose
    return {5: transposed, 6: transposed.flip(-1), 7: transposed.flip((-1, -2)), 8: transposed.flip(-2)}[orientation]


def decode_batch(batch: ReadBatch, device: torch.device | str
                 ) -> tuple[list[tuple[int, Tensor]], list[tuple[int, str]]]:
    """``([(image id, uint8 (3, H, W) pixels on the device)], [(image id, reason)])`` of a batch, in order.

    JPEG bytes are decoded together on ``device`` (one ``decode_jpeg`` call; if it refuses the batch,
    one call per image); a file the device decoder refuses is decoded by :func:`load_image` on the CPU,
    and one it refuses too is unreadable with its reason.
    """
    device = torch.device(device)
    encoded = [item for item in batch.items if item.encoded is not None]
    decoded: dict[int, Tensor | None] = {}
    if encoded:
        try:
            outputs = _decode_jpeg([item.encoded for item in encoded], device)
        except RuntimeError:
            outputs = [_decode_one(item.encoded, device) for item in encoded]
        decoded = {item.image_id: None if out is None else orient(out, item.orientation)
                   for item, out in zip(encoded, outputs)}
    readable, unreadable = [], []
    for item in batch.items:
        if item.reason is not None:
            unreadable.append((item.image_id, item.reason))
        elif item.pixels is not None:
            readable.append((item.image_id, item.pixels.to(device, non_blocking=True)))
        elif decoded.get(item.image_id) is not None:
            readable.append((item.image_id, decoded[item.image_id]))
        else:
            try:
                pixels = pixels_of(load_image(item.encoded.numpy().tobytes(), item.name))
                readable.append((item.image_id, pixels.to(device)))
            except ImageError as exc:
                unreadable.append((item.image_id, str(exc)))
    return readable, unreadable


def _decode_one(data: Tensor, device: torch.device) -> Tensor | None:
    try:
        return _decode_jpeg(data, device)
    except RuntimeError:
        return None


def _decode_jpeg(data: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    """``torchvision.io.decode_jpeg`` to RGB (torchvision 0.29 marks its decoders deprecated in favour of
    TorchCodec and warns at every call; they are what the pinned release has, nvJPEG batches included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
