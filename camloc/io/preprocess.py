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

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


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
        stacked = torch.stack([images[i].to(device, non_blocking=True) for i in members])
        out[torch.tensor(members, device=device)] = TF.resize(stacked, [size, size], antialias=True)
    return out


def normalise(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``uint8 (B, 3, S, S)`` → float32 ``(x / 255 − mean) / std`` (``mean``/``std`` shaped ``(1, 3, 1, 1)``);
    channels-last on a GPU (the layout its convolutions are fastest in)."""
    x = (pixels.float().div_(255) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
