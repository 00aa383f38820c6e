"""Methods from activations alone (no backward pass): CAM and EigenCAM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from camloc.cam.base import MapMethod, class_slots, forward_capturing, register, resolve_layer

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


def class_activation_maps(features: Tensor, weight: Tensor, classes: Sequence[int] | Tensor | None = None) -> Tensor:
    """Raw CAMs ``M[b,k] = Σ_c weight[k,c] · features[b,c]`` of every requested class, one matmul.

    ``features (B,C,h,w)``; ``weight (K,C)``, or ``(B,K,C)`` for per-image weights; ``classes``
    selects rows of ``weight``: ``(k,)`` for every image or ``(B, k)`` per image (default: all).
    Returns ``(B, k, h, w)`` in the input's device and dtype, with no bias, ReLU or normalisation:
    for a GAP + linear model ``maps.mean((-2, -1)) + bias == logits``.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B,C,h,w), got shape {tuple(features.shape)}")
    if weight.shape[-1] != features.shape[1]:
        raise ValueError(f"weight has {weight.shape[-1]} input channels, features have {features.shape[1]}")
    batch, channels, height, width = features.shape
    if classes is not None:
        index = torch.as_tensor(classes, dtype=torch.long, device=weight.device)
        if index.ndim == 2:
            rows = weight.expand(batch, *weight.shape[-2:]) if weight.ndim == 2 else weight
            weight = torch.gather(rows, 1, index[..., None].expand(-1, -1, channels))
        else:
            weight = weight.index_select(-2, index.reshape(-1))
    maps = torch.matmul(weight.to(features.dtype), features.reshape(batch, channels, height * width))
    return maps.reshape(batch, -1, height, width)


@register("cam", "CAM")
@dataclass(frozen=True)
class CAM(MapMethod):
    """CAM (Zhou et al., CVPR 2016): ``M_k = Σ_c W_kc A_c`` at the layer global pooling reads, with the
    head's weights ``W`` (:meth:`~camloc.models.CamModel.cam_terms` folds DenseNet's ReLU and ConvNeXt's
    LayerNorm in exactly): every class of every image in one matmul, from the classifying pass itself."""

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            logits, features = model(images)
            cam_input, weight, _ = model.cam_terms(features)
            slots = None if classes is None else class_slots(classes, len(images), logits.shape[1], logits.device)
            return class_activation_maps(cam_input, weight, slots), logits


@register("eigencam", "EigenCAM")
@dataclass(frozen=True)
class EigenCAM(MapMethod):
    """EigenCAM (Muhammad & Yeasin, IJCNN 2020): the first principal component of the activations, the
    same map for every class (it does not look at the head).

    ``X`` = the activations ``A (C, h, w)`` at ``layer`` as ``hw`` positions × ``C`` channels, centred
    per channel; ``M = X v₁`` with ``v₁`` the first right singular vector of ``X``. The sign of a singular
    vector is arbitrary, so ``M`` is signed to correlate positively with ``Σ_c A_c`` (the object lights up
    where the network's activations do). One batched SVD per forward pass.
    """

    layer: str | None = None
    class_agnostic: ClassVar[bool] = True

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            logits, (activations,) = forward_capturing(lambda x: model(x)[0], images,
                                                          [resolve_layer(model, self.layer)])
            batch, channels, height, width = activations.shape
            positions = activations.float().reshape(batch, channels, height * width).transpose(1, 2)
            centred = positions - positions.mean(1, keepdim=True)
            _, _, right = torch.linalg.svd(centred, full_matrices=False)
            projection = centred @ right[:, 0, :, None]  # (B, hw, 1)
            total = positions.sum(2, keepdim=True)
            sign = torch.where((projection * (total - total.mean(1, keepdim=True))).sum(1, keepdim=True) < 0, -1.0, 1.0)
            principal = (projection * sign).reshape(batch, 1, height, width).to(activations.dtype)
            slots = class_slots(classes, batch, logits.shape[1], logits.device)
            return principal.expand(-1, slots.shape[1], -1, -1).clone(), logits
