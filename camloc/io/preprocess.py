"""Images → network input on the model's device: ``uint8`` pixels in, normalised views out.

Every path into the network (``Localizer``, ``python -m eval``, ``python -m train``'s validation, the
app) hands over decoded ``uint8`` pixels ``(3, H, W)`` — a quarter of the bytes of float32, and nothing
pickled — and everything after that runs on the device:

* :func:`resize_square`: each image to ``S × S``, bilinear with antialiasing, still ``uint8``
  (``torchvision``'s ``resize``: on the CPU these are exactly the numbers the Localizer always fed
  its network; on a GPU the same filter in float32, rounded, can differ by one grey level);
* :func:`normalise`: ``(x / 255 − mean) / std`` in float32, channels-last on a GPU;
* a mirrored view is ``x.flip(-1)`` of the same batch, never a second resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from camloc.io.images import MAX_IMAGE_PIXELS, ImageError


def check_pixels(pixels: Any, name: str = "image") -> Tensor:
    """``pixels`` if it is a decoded image as every path into the network takes it — a dense ``uint8`` tensor
    ``(3, H, W)`` (RGB, channels first) of 1 to :data:`~camloc.io.images.MAX_IMAGE_PIXELS` pixels — else one
    :class:`~camloc.io.images.ImageError` (a ``ValueError``) naming ``name``, the expected shape and dtype and
    what it got."""
    shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else None
    if (shape is not None and pixels.layout == torch.strided and pixels.dtype == torch.uint8 and len(shape) == 3
            and shape[0] == 3 and 0 < shape[1] * shape[2] <= MAX_IMAGE_PIXELS):
        return pixels
    got = (f"{str(pixels.dtype).removeprefix('torch.')} {str(pixels.layout).removeprefix('torch.')} of shape "
           f"{shape}" if shape is not None else type(pixels).__name__)
    hint = "; a batch is a list of images" if shape is not None and len(shape) == 4 else ""
    raise ImageError(f"{name}: a tensor image must be uint8 (3, H, W) — RGB, channels first, dense, 1 to "
                     f"{MAX_IMAGE_PIXELS:,} pixels; got {got}{hint}")


def pixels_of(image: Image.Image) -> Tensor:
    """An RGB PIL image as ``uint8 (3, H, W)`` (no copy of the pixel data beyond PIL's export)."""
    return TF.pil_to_tensor(image)


def resize_square(images: Sequence[Tensor], size: int, device: torch.device | str) -> Tensor:
    """``uint8 (3, H, W)`` images of any sizes → ``uint8 (B, 3, size, size)`` on ``device``, each resized
    with antialiased bilinear filtering (moved to the device first, so the resize runs there). Images of
    the same size are resized together, one call per distinct size (a COCO batch has a handful)."""
    device = torch.device(device)
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    for members in groups.values():
        moved = [images[i].to(device, non_blocking=True) for i in members]
        stacked = moved[0][None] if len(moved) == 1 else torch.stack(moved)  # one image alone: a view, no copy
        out[torch.tensor(members, device=device)] = TF.resize(stacked, [size, size], antialias=True)
    return out


def normalise(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``uint8 (B, 3, S, S)`` → float32 ``(x / 255 − mean) / std`` (``mean``/``std`` shaped ``(1, 3, 1, 1)``);
    channels-last on a GPU (the layout its convolutions are fastest in)."""
    x = (pixels.float().div_(255) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
