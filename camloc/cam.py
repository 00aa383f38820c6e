"""Class activation maps for many images and many classes at once, on the input's device.

* CAM (Zhou et al. 2016): ``M_k = Σ_c W_kc A_c`` — every class of every image in one matmul.
* Grad-CAM (Selvaraju et al. 2017): ``M_k = Σ_c α_kc A_c``, ``α_kc = mean_xy ∂y_k/∂A_c(x,y)``.
* Grad-CAM++ (Chattopadhay et al. 2018): ``α_kc = Σ_xy a_kc(x,y) ReLU(g)`` with
  ``a = g² / (2g² + Σ_xy A_c · g³)``, ``g = ∂y_k/∂A_c``.

All return *raw* maps ``(B, K, h, w)``: no ReLU, no normalisation. :func:`normalize_maps`
upsamples, applies ReLU and min-max normalises each map to [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GRADIENT_METHODS = ("gradcam", "gradcampp")
METHODS = ("cam", *GRADIENT_METHODS)


def _class_index(classes: Sequence[int] | Tensor | None, device: torch.device) -> Tensor | None:
    if classes is None:
        return None
    return torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)


def class_activation_maps(features: Tensor, weight: Tensor, classes: Sequence[int] | Tensor | None = None) -> Tensor:
    """Raw CAMs ``M[b,k] = Σ_c weight[k,c] · features[b,c]`` of every requested class, one matmul.

    ``features (B,C,h,w)``; ``weight (K,C)``, or ``(B,K,C)`` for per-image weights; ``classes``
    selects rows of ``weight`` (default: all). Returns ``(B, K', h, w)`` in the input's device and
    dtype, with no bias, ReLU or normalisation: for a GAP + linear model
    ``maps.mean((-2, -1)) + bias == logits``.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B,C,h,w), got shape {tuple(features.shape)}")
    index = _class_index(classes, weight.device)
    if index is not None:
        weight = weight.index_select(-2, index)
    if weight.shape[-1] != features.shape[1]:
        raise ValueError(f"weight has {weight.shape[-1]} input channels, features have {features.shape[1]}")
    batch, channels, height, width = features.shape
    maps = torch.matmul(weight.to(features.dtype), features.reshape(batch, channels, height * width))
    return maps.reshape(batch, -1, height, width)


def _grad_weights(grads: Tensor, activations: Tensor, method: str) -> Tensor:
    """Channel weights ``(K,B,C)`` from gradients ``(K,B,C,h,w)`` and activations ``(B,C,h,w)``."""
    if method == "gradcam":
        return grads.mean((-2, -1))
    grads_2 = grads.pow(2)
    denominator = 2 * grads_2 + activations.sum((-2, -1), keepdim=True) * grads_2 * grads
    alpha = grads_2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * F.relu(grads)).sum((-2, -1))


def gradient_maps(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    layer: nn.Module,
    classes: Sequence[int] | Tensor,
    method: str = "gradcam",
    chunk: int = 16,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM / Grad-CAM++ maps of many classes at ``layer``, from one forward pass.

    ``forward`` maps images to logits ``(B, N)``. The backward passes for ``chunk`` classes at a
    time are batched with ``torch.autograd.grad(..., is_grads_batched=True)``; images are
    independent in eval mode, so one vector-Jacobian product per class serves all images.
    Returns ``(raw maps (B, K, h, w), logits (B, N))``.
    """
    if method not in GRADIENT_METHODS:
        raise ValueError(f"unknown gradient method {method!r}; choose one of {GRADIENT_METHODS}")
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = forward(images.detach().requires_grad_(True))
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the chosen layer did not run during the forward pass")
    activations = captured[-1]
    index = _class_index(classes, logits.device)
    maps = []
    for start in range(0, len(index), chunk):
        part = index[start:start + chunk]
        one_hot = torch.zeros(len(part), *logits.shape, device=logits.device, dtype=logits.dtype)
        one_hot[torch.arange(len(part)), :, part] = 1
        last = start + chunk >= len(index)
        (grads,) = torch.autograd.grad(logits, activations, one_hot, retain_graph=not last, is_grads_batched=True)
        weights = _grad_weights(grads, activations, method).permute(1, 0, 2)  # (B, k, C)
        maps.append(torch.einsum("bkc,bchw->bkhw", weights, activations))
    return torch.cat(maps, dim=1).detach(), logits.detach()


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(size_in: int, size_out: int) -> Tensor:
    """``R (size_out, size_in)`` with ``R @ v`` = 1-D linear interpolation, ``align_corners=False``.

    Output pixel ``i`` samples the input at ``s = max((i + ½)·size_in/size_out − ½, 0)``, between
    ``⌊s⌋`` and ``min(⌊s⌋+1, size_in−1)`` — PyTorch's and OpenCV's bilinear convention.
    """
    src = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp_(min=0)
    low = src.floor().long().clamp_(max=size_in - 1)
    high = (low + 1).clamp_(max=size_in - 1)
    frac = src - low
    rows = torch.arange(size_out)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


def upsample_bilinear(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)`` as two matmuls ``R_y · M · R_xᵀ``.

    Same result as ``F.interpolate(mode="bilinear", align_corners=False)`` (to float rounding),
    several times faster on the CPU for many small maps.
    """
    height, width = size
    rows = _interpolation_matrix(maps.shape[-2], height).to(maps.device, maps.dtype)
    cols = _interpolation_matrix(maps.shape[-1], width).to(maps.device, maps.dtype)
    return torch.matmul(torch.matmul(rows, maps), cols.T)


def check_finite_maps(maps: Tensor) -> None:
    """A ``ValueError`` unless every value of the raw maps is finite (checked before upsampling:
    finite raw maps normalise into [0, 1], so the full-size maps need no second look)."""
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or infinite values; normalise finite maps to [0, 1]")


def normalize_maps(maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Upsample raw maps ``(..., h, w)`` to ``size = (H, W)`` (bilinear), ReLU, then min-max per map.

    ``out = (m − min m) / (max m − min m)``; a constant map (including all-zero after ReLU) becomes
    all zeros rather than NaN.
    """
    shape = maps.shape
    size = tuple(size or shape[-2:])
    flat = maps.reshape(-1, *shape[-2:]).float()
    flat = upsample_bilinear(flat, size) if size != tuple(shape[-2:]) else flat.clone()
    flat.clamp_(min=0)
    low = flat.amin((-2, -1), keepdim=True)
    span = flat.amax((-2, -1), keepdim=True) - low
    flat.sub_(low).mul_(torch.where(span > 0, 1 / span, 0.0))
    return flat.reshape(*shape[:-2], *size)
