"""Gradient methods that weight every position of every channel: HiResCAM, LayerCAM, and LayerCAM fused
over several layers (maps finer than the last feature grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camloc.cam.base import MapMethod, check_positive, forward_capturing, register, resolve_layer
from camloc.cam.gradient import GradientMethod, backward_maps
from camloc.cam.maps import upsample_bilinear

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


@register("hirescam", "HiResCAM")
@dataclass(frozen=True)
class HiResCAM(GradientMethod):
    """HiResCAM (Draelos & Carin 2020): ``M_k(x, y) = Σ_c ∂y_k/∂A_c(x, y) · A_c(x, y)`` — Grad-CAM without
    averaging the gradients over positions."""

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        return (grads * activations).sum(2).transpose(0, 1)


@register("layercam", "LayerCAM")
@dataclass(frozen=True)
class LayerCAM(GradientMethod):
    """LayerCAM (Jiang et al., TIP 2021, eq. 4–5): ``M_k(x, y) = Σ_c ReLU(∂y_k/∂A_c(x, y)) · A_c(x, y)`` at
    ``layer`` (any layer: inner layers give finer maps)."""

    def combine(self, grads: Tensor, activations: Tensor) -> Tensor:
        return (F.relu(grads) * activations).sum(2).transpose(0, 1)


def stage_chain(model: CamModel) -> list[tuple[str, nn.Module]]:
    """The modules that run one after the other up to the feature layer: the feature layer's earlier
    siblings, then the feature layer's own children when it is a ``Sequential`` (ResNet: ``conv1`` …
    ``layer3``, ``layer4.0`` … ; MobileNet, EfficientNet, ConvNeXt, DenseNet: ``features.0`` … ; RegNet:
    ``stem``, ``trunk_output.block1`` …), else the feature layer itself."""
    feature = model.family.feature_layer
    parent_name, _, leaf = feature.rpartition(".")
    parent = model.net.get_submodule(parent_name) if parent_name else model.net
    prefix = f"{parent_name}." if parent_name else ""
    chain = []
    for name, child in parent.named_children():
        if name != leaf:
            chain.append((prefix + name, child))
            continue
        if isinstance(child, nn.Sequential):
            chain += [(f"{feature}.{inner}", grandchild) for inner, grandchild in child.named_children()]
        else:
            chain.append((feature, child))
        break
    return chain


def last_of_each_grid(grids: list[tuple[int, int]], count: int) -> list[int]:
    """Positions (in chain order) of the last module at each of the ``count`` coarsest distinct grids."""
    last: dict[tuple[int, int], int] = {}
    for position, grid in enumerate(grids):
        last[grid] = position
    return sorted(last.values())[-count:]


def scaled_map(maps: Tensor, gamma: float) -> Tensor:
    """``tanh(γ · M / max M)`` per map (0 for a map that is 0 everywhere)."""
    peak = maps.amax((-2, -1), keepdim=True)
    return torch.tanh(gamma * maps / torch.where(peak > 0, peak, torch.ones_like(peak)))


@register("layercam-fused", "LayerCAM fused")
@dataclass(frozen=True)
class LayerCAMFused(MapMethod):
    """LayerCAM of several layers fused into one map at the finest of their grids (Jiang et al., TIP 2021,
    sec. III-C): each layer's ``M_l = ReLU(Σ_c ReLU(∂y_k/∂A_c) · A_c)`` is scaled to
    ``tanh(γ · M_l / max M_l)`` (eq. 9, γ = 2), upsampled bilinearly to the finest grid and the maps are
    fused by their element-wise maximum (as torchcam's ``LayerCAM.fuse_cams``).

    ``layers``: module names of ``model.net`` (default: the last module at each of the ``stages`` coarsest
    feature grids of the chain to the feature layer — MobileNetV2: ``features.6``, ``features.13``,
    ``features.18``, strides 8, 16, 32; ResNet: ``layer2``, ``layer3``, ``layer4``'s last block). One backward pass per
    class slot gives the gradients at every layer.
    """

    layers: tuple[str, ...] | None = None
    stages: int = 3
    gamma: float = 2.0
    chunk: int = 8
    per_class: ClassVar[bool] = True
    costly: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(self.chunk, "chunk")
        check_positive(self.stages, "stages")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not (
                math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma must be a positive number, got {self.gamma!r}")
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not layers or not all(isinstance(name, str) and name for name in layers):
                raise ValueError(f"layers must be module names, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)

    def chosen_layers(self, model: CamModel, images: Tensor) -> list[nn.Module]:
        """The modules whose maps are fused: ``layers``, or the stage outputs (found with a 64×64 probe)."""
        if self.layers is not None:
            return [resolve_layer(model, name) for name in self.layers]
        chain = stage_chain(model)
        probe = images.new_zeros(1, images.shape[1], 64, 64)  # which module ends each grid does not depend on size
        with torch.inference_mode():
            _, outputs = forward_capturing(lambda x: model(x)[0], probe, [m for _, m in chain])
        picked = last_of_each_grid([tuple(o.shape[-2:]) for o in outputs], self.stages)
        return [chain[i][1] for i in picked]

    def fuse(self, grads: list[Tensor], activations: list[Tensor]) -> Tensor:
        """Per-layer LayerCAM, scaled, upsampled to the finest grid and fused by the maximum."""
        per_layer = [F.relu((F.relu(g) * a).sum(2).transpose(0, 1)) for g, a in zip(grads, activations)]
        grid = max((tuple(m.shape[-2:]) for m in per_layer), key=lambda hw: hw[0] * hw[1])
        fused = None
        for maps in per_layer:
            scaled = scaled_map(maps, float(self.gamma))
            if tuple(scaled.shape[-2:]) != grid:
                scaled = upsample_bilinear(scaled.reshape(-1, *scaled.shape[-2:]), grid).reshape(
                    *scaled.shape[:2], *grid)
            fused = scaled if fused is None else torch.maximum(fused, scaled)
        return fused

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return backward_maps(lambda x: model(x)[0], images, self.chosen_layers(model, images), classes, self.chunk,
                             self.fuse)
