"""Score-CAM: channel weights from forward passes of the image masked by each channel (no gradients)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from camloc.cam.base import (
    MapMethod,
    check_positive,
    class_slots,
    forward_capturing,
    pick_classes,
    register,
    resolve_layer,
)
from camloc.cam.maps import upsample_bilinear

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


def channel_masks(activations: Tensor, size: tuple[int, int]) -> Tensor:
    """``H_c = minmax(Up(A_c))``: maps ``(n, h, w)`` upsampled bilinearly (``align_corners=False``) to ``size``,
    then min-max normalised to [0, 1] each (a constant map gives an all-zero mask)."""
    masks = upsample_bilinear(activations.float(), size)
    low = masks.amin((-2, -1), keepdim=True)
    span = masks.amax((-2, -1), keepdim=True) - low
    return (masks - low).mul_(torch.where(span > 0, 1 / span, 0.0))


@register("scorecam", "Score-CAM")
@dataclass(frozen=True)
class ScoreCAM(MapMethod):
    """Score-CAM (Wang et al., CVPR workshops 2020): ``M_k = Σ_c w_kc A_c`` with
    ``w_k· = softmax_c(y_k(X ⊙ H_c) − y_k(X_b))`` over the channels ``c`` and ``H_c = minmax(Up(A_c))`` the
    channel's activation upsampled to the input and normalised to [0, 1]; ``y_k`` the logit of class ``k``.
    The baseline's score ``y_k(X_b)`` is the same for every channel, so the softmax does not depend on it.

    One forward pass per (image, channel) serves *every* class (the masked image's logits are all the
    classes' scores): 80 classes cost what one class costs. The masked images run ``batch_size`` at a time
    (the memory bound: ``batch_size`` images of the input's size). ``max_channels`` keeps, per image, only
    the channels whose activation varies most over the positions (as Faster Score-CAM; softmax and sum over
    the kept channels): MobileNetV2 has 1280 channels at its feature layer, so the full method costs 1280
    forward passes per image — minutes on a CPU.
    """

    layer: str | None = None
    batch_size: int = 32
    max_channels: int | None = None
    masked_passes: ClassVar[bool] = True
    costly: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(self.batch_size, "batch_size")
        if self.max_channels is not None:
            check_positive(self.max_channels, "max_channels")

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            logits, (activations,) = forward_capturing(lambda x: model(x)[0], images,
                                                       [resolve_layer(model, self.layer)])
            batch, channels, height, width = activations.shape
            if self.max_channels is not None and self.max_channels < channels:
                keep = activations.flatten(2).var(-1, correction=0).topk(self.max_channels, dim=1).indices
                activations = pick_classes(activations, keep)
            kept = activations.shape[1]
            owner = torch.arange(batch, device=images.device).repeat_interleave(kept)
            flat = activations.reshape(batch * kept, height, width)
            scores = []
            for start in range(0, len(flat), self.batch_size):
                masks = channel_masks(flat[start:start + self.batch_size], tuple(images.shape[-2:]))
                scores.append(model(images[owner[start:start + self.batch_size]] * masks[:, None].to(images.dtype))[0])
            weights = torch.softmax(torch.cat(scores).reshape(batch, kept, -1).float(), dim=1)  # (B, kept, K)
            slots = class_slots(classes, batch, logits.shape[1], logits.device)
            chosen = pick_classes(weights.transpose(1, 2), slots)  # (B, k, kept)
            maps = torch.einsum("bkc,bchw->bkhw", chosen, activations.float()).to(activations.dtype)
            return maps, logits
