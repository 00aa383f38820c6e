"""Where each torchvision family keeps its feature layer and head, and how to build one for CAM.

camloc wraps *unmodified* torchvision classifiers (their ``state_dict`` is plain torchvision): a
:class:`Family` names the module whose output enters global average pooling and the final linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torchvision
from torch import nn


class ModelError(ValueError):
    """A model or checkpoint that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Family:
    """Where a torchvision family keeps its pieces.

    ``feature_layer`` outputs the map A fed to the pool; ``head`` is the final ``nn.Linear``;
    ``feature_relu``: the forward applies a functional ReLU between them (DenseNet);
    ``pooled_norm``: a LayerNorm acts on the pooled vector before the head (ConvNeXt).
    """

    feature_layer: str
    head: str
    feature_relu: bool = False
    pooled_norm: str | None = None


FAMILIES: dict[str, Family] = {
    "resnet": Family("layer4", "fc"),
    "resnext": Family("layer4", "fc"),
    "wide_resnet": Family("layer4", "fc"),
    "regnet": Family("trunk_output", "fc"),
    "mobilenet_v2": Family("features", "classifier.1"),
    "mobilenet_v3": Family("features", "classifier.1"),
    "efficientnet": Family("features", "classifier.1"),
    "densenet": Family("features", "classifier", feature_relu=True),
    "convnext": Family("features", "classifier.2", pooled_norm="classifier.0"),
}


def family_of(arch: str) -> Family:
    """The :class:`Family` of a torchvision architecture name such as ``"resnet50"``."""
    if not isinstance(arch, str):
        raise ModelError(f"architecture must be a name such as 'resnet50', got {arch!r}")
    for prefix in sorted(FAMILIES, key=len, reverse=True):
        if arch.startswith(prefix):
            return FAMILIES[prefix]
    raise ModelError(f"architecture {arch!r} is not supported; use one of the families "
                     f"{', '.join(sorted(FAMILIES))} (e.g. resnet50, mobilenet_v2, efficientnet_b0)")


def get_module(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def set_module(module: nn.Module, path: str, child: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, child)


def dilation_kwargs(arch: str) -> dict[str, Any]:
    """Builder arguments that turn the last stride-2 stage into a dilated one (output stride 16):
    twice the CAM resolution for the same input, with the same weights."""
    if arch.startswith(("resnet", "resnext", "wide_resnet")) and arch not in ("resnet18", "resnet34"):
        return {"replace_stride_with_dilation": [False, False, True]}
    if arch.startswith("mobilenet_v3"):
        return {"dilated": True}
    raise ModelError(f"dilation is available for bottleneck ResNets (resnet50+, resnext, wide_resnet) and "
                     f"mobilenet_v3, not {arch}")


def dilation_or_none(arch: str) -> dict[str, Any] | None:
    try:
        return dilation_kwargs(arch)
    except ModelError:
        return None


def build_torchvision(arch: str, num_classes: int, arch_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """An untrained torchvision ``arch`` whose head is ``nn.Linear(C, num_classes)`` right after GAP.

    MobileNetV3's two-layer classifier is replaced by a single linear layer so that the model is
    GAP + linear, the structure CAM needs; every other family is torchvision's own.
    ``arch_kwargs`` go to the torchvision builder (e.g. :func:`dilation_kwargs`).
    """
    family = family_of(arch)
    kwargs = dict(arch_kwargs or {})
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"torchvision has no classifier named {arch!r}")
    if arch.startswith("mobilenet_v3"):
        net = torchvision.models.get_model(arch, weights=None, **kwargs)
        in_features = net.classifier[0].in_features
        net.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_features, num_classes))
        return net
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if not isinstance(get_module(net, family.head), nn.Linear):
        raise ModelError(f"{arch}: expected a linear head at {family.head!r}")
    return net
