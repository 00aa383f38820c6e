"""``CamModel``: a torchvision GAP classifier that also returns its feature map, and the CAM identity's terms.

A :class:`CamModel` returns, from one forward pass, the logits and the feature map ``A`` that enters
global average pooling. :meth:`CamModel.cam_terms` turns ``A`` into the three terms of the exact CAM
identity ``class_activation_maps(A', W).mean((-2, -1)) + b == logits``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camloc.models.classes import COCO_CATEGORY_IDS, COCO_NAMES
from camloc.models.families import ModelError, family_of, get_module, set_module
from camloc.models.imagenet_coco import UNSUPPORTED_COCO_CLASSES, coco_groups


class GroupedImageNetHead(nn.Module):
    """A COCO head made from an ImageNet head with no training.

    ``logit_k = log Σ_{i∈G_k} softmax(W p + b)_i``: the log of the probability mass ImageNet puts
    on the classes that are COCO class k (``-inf`` for a class with no counterpart), so
    ``exp(logit)`` is that class's probability.
    """

    def __init__(self, linear: nn.Linear, groups: list[list[int]]):
        super().__init__()
        self.linear = linear
        membership = torch.zeros(len(groups), linear.out_features)
        for k, rows in enumerate(groups):
            membership[k, rows] = 1.0
        self.register_buffer("membership", membership)

    def forward(self, pooled: Tensor) -> Tensor:
        log_probs = torch.log_softmax(self.linear(pooled), dim=-1)
        masked = log_probs.unsqueeze(-2).masked_fill(self.membership == 0, float("-inf"))
        return torch.logsumexp(masked, dim=-1)

    def member_weights(self, pooled: Tensor) -> Tensor:
        """``(B, K, N)``: each member's share ``softmax_i / Σ_{G_k} softmax`` of its group, per image."""
        probs = torch.softmax(self.linear(pooled), dim=-1).unsqueeze(-2) * self.membership
        return probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


class CamModel(nn.Module):
    """A torchvision GAP classifier that also returns its feature map from the same forward pass."""

    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.net = net
        self.arch = arch
        self.family = family_of(arch)
        self._features: Tensor | None = None
        get_module(net, self.family.feature_layer).register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._features = output

    @property
    def head(self) -> nn.Module:
        return get_module(self.net, self.family.head)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B,3,H,W)`` → ``(logits (B,K), features (B,C,h,w))``, one forward pass."""
        logits = self.net(images)
        features, self._features = self._features, None
        return logits, features

    def head_logits(self, features: Tensor) -> Tensor:
        """The logits the rest of the network computes from its feature map ``A``: ``mean_xy(A′)·Wᵀ + b``
        with :meth:`cam_terms` (or the grouped ImageNet head on the pooled map), in ``A``'s dtype.
        After a bf16/fp16 backbone, called on the float32 features, it gives float32 logits."""
        head = self.head
        if isinstance(head, GroupedImageNetHead):
            return head((F.relu(features) if self.family.feature_relu else features).mean((-2, -1)))
        adjusted, weight, bias = self.cam_terms(features)
        return adjusted.mean((-2, -1)) @ weight.T.to(adjusted.dtype) + bias.to(adjusted.dtype)

    def cam_terms(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(A', W, b)`` with ``class_activation_maps(A', W).mean((-2,-1)) + b == logits``.

        For a plain linear head ``A' = A`` (after DenseNet's ReLU), ``W, b`` the head's.
        ConvNeXt's LayerNorm on the pooled vector ``p`` is affine per image, so
        ``A' = γ ⊙ (A − μ(p)) / σ(p)`` and ``b' = W β + b``. For a
        :class:`GroupedImageNetHead`, ``W`` is per image ``(B, K, C)``: each group's member rows
        weighted by their share of the group's probability (the CAM of the member the image is).
        """
        if self.family.feature_relu:
            features = F.relu(features)
        head = self.head
        if isinstance(head, GroupedImageNetHead):
            pooled = features.mean((-2, -1))
            if self.family.pooled_norm:
                raise ModelError("an ImageNet-derived COCO head is not supported on ConvNeXt")
            shares = head.member_weights(pooled)
            return features, shares @ head.linear.weight, shares @ head.linear.bias
        if self.family.pooled_norm:
            norm = get_module(self.net, self.family.pooled_norm)
            pooled = features.mean((-2, -1), keepdim=True)
            mean = pooled.mean(1, keepdim=True)
            var = pooled.var(1, unbiased=False, keepdim=True)
            scale = norm.weight.view(1, -1, 1, 1) / torch.sqrt(var + norm.eps)
            features = (features - mean) * scale
            return features, head.weight, head.weight @ norm.bias + head.bias
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        return features, head.weight, bias



def probabilities(logits: Tensor, activation: str) -> Tensor:
    """Class probabilities from logits: ``sigmoid``, ``softmax`` or ``exp`` (log-probability logits)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    if activation == "exp":
        return torch.exp(logits)
    raise ModelError(f"unknown head activation {activation!r} (sigmoid, softmax or exp)")


def derive_coco_head(model: CamModel, meta: dict[str, Any]) -> tuple[CamModel, dict[str, Any]]:
    """Turn an ImageNet classifier into a COCO-80 one with no training (see :mod:`camloc.models.imagenet_coco`).

    Classes with no ImageNet counterpart get probability 0 and are listed in
    ``meta["unsupported_classes"]``; the Localizer leaves them out.
    """
    head = model.head
    if not isinstance(head, nn.Linear) or model.family.pooled_norm or meta.get("head") != "linear":
        raise ModelError(f"{meta['arch']}: only a plain GAP + linear ImageNet head can be mapped to COCO")
    if meta["arch"].startswith("mobilenet_v3"):
        raise ModelError("mobilenet_v3's ImageNet head is not GAP + linear; it cannot be mapped to COCO")
    set_module(model.net, model.family.head, GroupedImageNetHead(head, coco_groups(head.out_features)))
    new_meta = dict(meta, num_classes=len(COCO_NAMES), class_names=list(COCO_NAMES),
                    coco_category_ids=list(COCO_CATEGORY_IDS), category_ids=list(COCO_CATEGORY_IDS), activation="exp",
                    head="imagenet_groups", imagenet_outputs=head.out_features,
                    unsupported_classes=list(UNSUPPORTED_COCO_CLASSES))
    return model, new_meta
