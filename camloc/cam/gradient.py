"""Gradient methods with one weight per channel (Grad-CAM, Grad-CAM++, XGrad-CAM), and the batched
backward passes every gradient method shares.

Every class of every image from one forward pass: the backward passes for ``chunk`` classes at a time
run as one batched vector-Jacobian product (``torch.autograd.grad(..., is_grads_batched=True)``), and
since images are independent in eval mode, one product per class slot serves the whole batch — each
image with its own class in that slot when ``classes`` is ``(B, k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camloc.cam.base import METHODS, MapMethod, check_positive, class_slots, forward_capturing, register, resolve_layer

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel

#: ``combine(gradients per layer (k, B, C, h, w), activations per layer (B, C, h, w)) → maps (B, k, h', w')``.
Combine = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]


def backward_maps(forward: Callable[[Tensor], Tensor], images: Tensor, layers: Sequence[nn.Module],
                  classes: Sequence[int] | Tensor | None, chunk: int, combine: Combine) -> tuple[Tensor, Tensor]:
    """One forward pass, then batched backward passes ``chunk`` class slots at a time; ``combine`` turns
    each chunk's gradients at ``layers`` into maps. Returns ``(raw maps (B, k, h, w), logits (B, K))``."""
    with torch.enable_grad():
        logits, activations = forward_capturing(forward, images.detach().requires_grad_(True), layers)
    slots = class_slots(classes, len(images), logits.shape[1], logits.device)
    plain = [a.detach() for a in activations]
    count = slots.shape[1]
    if count == 0:
        with torch.no_grad():
            return combine([a.new_zeros(0, *a.shape) for a in plain], plain), logits.detach()
    parts = []
    for start in range(0, count, chunk):
        part = slots[:, start:start + chunk]
        one_hot = torch.zeros(part.shape[1], *logits.shape, device=logits.device, dtype=logits.dtype)
        one_hot.scatter_(2, part.T.unsqueeze(-1), 1.0)
        grads = torch.autograd.grad(logits, activations, one_hot, retain_graph=start + chunk < count,
                                    is_grads_batched=True)
        with torch.no_grad():
            parts.append(combine(grads, plain))
    return torch.cat(parts, dim=1), logits.detach()


@dataclass(frozen=True)
class GradientMethod(MapMethod):
    """A gradient method at one ``layer`` (default: the feature layer): :meth:`combine` turns the gradients
    ``g = ∂y_k/∂A`` of a chunk of classes and the activations ``A`` into maps. At the feature layer of a
    GAP + linear model ``g = W_k / (h·w)`` everywhere, so Grad-CAM, XGrad-CAM and HiResCAM there equal
    CAM / (h·w); they differ from CAM at inner layers."""

    layer: str | None = None
    chunk: int = 16
    per_class: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(self.chunk, "chunk")

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        """``grads (k, B, C, h, w)``, ``activations (B, C, h, w)`` → maps ``(B, k, h, w)``."""
        raise NotImplementedError

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return backward_maps(lambda x: model(x)[0], images, [resolve_layer(model, self.layer)], classes, self.chunk,
                             lambda grads, acts: self.combine(grads[0], acts[0]))


def weighted_channels(weights: Tensor, activations: Tensor) -> Tensor:
    """``Σ_c weights[k, b, c] · A[b, c]``: channel weights ``(k, B, C)`` → maps ``(B, k, h, w)``."""
    return torch.einsum("kbc,bchw->bkhw", weights, activations)


@register("gradcam", "Grad-CAM")
@dataclass(frozen=True)
class GradCAM(GradientMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``M_k = Σ_c α_kc A_c``, ``α_kc = mean_xy ∂y_k/∂A_c(x, y)``."""

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        return weighted_channels(grads.mean((-2, -1)), activations)


@register("gradcampp", "Grad-CAM++")
@dataclass(frozen=True)
class GradCAMPlusPlus(GradientMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 with exponential output): ``M_k = Σ_c w_kc A_c``,
    ``w_kc = Σ_xy a_kc(x, y) · ReLU(g)``, ``a = g² / (2g² + Σ_xy A_c · g³)`` (0 where the denominator is 0),
    ``g = ∂y_k/∂A_c``. No ε in the denominator: at the pooling layer ``g = W/(h·w)`` is small, and an ε of
    1e-6 (pytorch-grad-cam's) changes ``a`` there."""

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        grads_2 = grads.pow(2)
        denominator = 2 * grads_2 + activations.sum((-2, -1), keepdim=True) * grads_2 * grads
        alpha = grads_2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        return weighted_channels((alpha * F.relu(grads)).sum((-2, -1)), activations)


@register("xgradcam", "XGrad-CAM")
@dataclass(frozen=True)
class XGradCAM(GradientMethod):
    """XGrad-CAM (Fu et al., BMVC 2020): ``M_k = Σ_c α_kc A_c``,
    ``α_kc = Σ_xy (A_c(x, y) / Σ_x'y' A_c(x', y')) · ∂y_k/∂A_c(x, y)`` (0 for a channel whose sum is 0)."""

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        total = activations.sum((-2, -1))
        weights = (grads * activations).sum((-2, -1)) / torch.where(total != 0, total, torch.ones_like(total))
        return weighted_channels(torch.where(total != 0, weights, torch.zeros_like(weights)), activations)


def gradient_maps(forward: Callable[[Tensor], Tensor], images: Tensor, layer: nn.Module,
                  classes: Sequence[int] | Tensor | None, method: str = "gradcam", chunk: int = 16
                  ) -> tuple[Tensor, Tensor]:
    """Maps of a single-layer gradient method (``gradcam``, ``gradcampp``, ``xgradcam``, ``hirescam``,
    ``layercam``) of many classes at ``layer``, from one forward pass.

    ``forward`` maps images to logits ``(B, N)``; ``classes`` ``(k,)`` shared or ``(B, k)`` per image
    (``None``: all). The backward passes for ``chunk`` classes at a time are batched (see the module
    docstring). Returns ``(raw maps (B, k, h, w), logits (B, N))``.
    """
    cls = METHODS.get(method)
    if cls is None or not issubclass(cls, GradientMethod):
        names = [n for n, c in METHODS.items() if issubclass(c, GradientMethod)]
        raise ValueError(f"unknown gradient method {method!r}; choose one of {tuple(names)}")
    check_positive(chunk, "chunk")
    chosen = cls()
    return backward_maps(forward, images, [layer], classes, chunk,
                         lambda grads, acts: chosen.combine(grads[0], acts[0]))
