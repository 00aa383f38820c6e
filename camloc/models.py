"""GAP classifiers for CAM: build any torchvision family, find its feature layer and head, save/load.

A :class:`CamModel` wraps an *unmodified* torchvision classifier (so its ``state_dict`` is plain
torchvision) and returns, from one forward pass, the logits and the feature map ``A`` that
enters global average pooling. :meth:`CamModel.cam_terms` turns ``A`` into the three terms of
the exact CAM identity ``class_activation_maps(A', W).mean((-2, -1)) + b == logits``.

Checkpoints are data, never code: every load uses ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from camloc.classes import COCO_CATEGORY_IDS, COCO_NAMES, is_coco_head
from camloc.imagenet_coco import UNSUPPORTED_COCO_CLASSES, coco_groups
from camloc.io_utils import atomic_output

CHECKPOINT_FORMAT = "camloc"
CHECKPOINT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    for prefix in sorted(FAMILIES, key=len, reverse=True):
        if arch.startswith(prefix):
            return FAMILIES[prefix]
    raise ModelError(f"architecture {arch!r} is not supported; use one of the families "
                     f"{', '.join(sorted(FAMILIES))} (e.g. resnet50, mobilenet_v2, efficientnet_b0)")


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, child: nn.Module) -> None:
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
    if not isinstance(_get(net, family.head), nn.Linear):
        raise ModelError(f"{arch}: expected a linear head at {family.head!r}")
    return net


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
        _get(net, self.family.feature_layer).register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._features = output

    @property
    def head(self) -> nn.Module:
        return _get(self.net, self.family.head)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B,3,H,W)`` → ``(logits (B,K), features (B,C,h,w))``, one forward pass."""
        logits = self.net(images)
        features, self._features = self._features, None
        return logits, features

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
            norm = _get(self.net, self.family.pooled_norm)
            pooled = features.mean((-2, -1), keepdim=True)
            mean = pooled.mean(1, keepdim=True)
            var = pooled.var(1, unbiased=False, keepdim=True)
            scale = norm.weight.view(1, -1, 1, 1) / torch.sqrt(var + norm.eps)
            features = (features - mean) * scale
            return features, head.weight, head.weight @ norm.bias + head.bias
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        return features, head.weight, bias


# ----------------------------------------------------------------------------------------------
# metadata, building, pretrained weights
# ----------------------------------------------------------------------------------------------

def complete_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Fill the keys DESIGN.md promises (``feature_layer``, ``coco_category_ids``, ``activation``).

    ``category_ids`` (the dataset's category id of each output) equals ``coco_category_ids`` for
    COCO heads; a head trained on another COCO-format dataset stores its own.
    """
    meta = dict(meta)
    for key in ("arch", "num_classes", "class_names"):
        if key not in meta:
            raise ModelError(f"model metadata lacks {key!r}; it needs arch, num_classes, class_names")
    if len(meta["class_names"]) != meta["num_classes"]:
        raise ModelError(f"metadata lists {len(meta['class_names'])} class names for "
                         f"{meta['num_classes']} classes; they must agree")
    family = family_of(meta["arch"])
    meta.setdefault("feature_layer", family.feature_layer)
    meta.setdefault("mean", list(IMAGENET_MEAN))
    meta.setdefault("std", list(IMAGENET_STD))
    meta.setdefault("input_size", 448)
    meta.setdefault("head", "linear")
    if is_coco_head(meta["class_names"]):
        meta.setdefault("coco_category_ids", list(COCO_CATEGORY_IDS))
    if "coco_category_ids" in meta:
        meta.setdefault("category_ids", list(meta["coco_category_ids"]))
    # Multi-label (BCE) COCO heads score with a sigmoid, single-label heads with a softmax.
    meta.setdefault("activation", "sigmoid" if "coco_category_ids" in meta else "softmax")
    return meta


def probabilities(logits: Tensor, activation: str) -> Tensor:
    """Class probabilities from logits: ``sigmoid``, ``softmax`` or ``exp`` (log-probability logits)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    if activation == "exp":
        return torch.exp(logits)
    raise ModelError(f"unknown head activation {activation!r} (sigmoid, softmax or exp)")


def imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's default ImageNet weights for ``arch`` (downloaded once into the torch hub cache).

    Offline with nothing cached, raises a :class:`ModelError` naming the file to download and where
    to put it (or to pass ``--weights PATH``).
    """
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise ModelError(f"torchvision has no pretrained weights for {arch!r}") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"could not get ImageNet weights for {arch} ({exc.__class__.__name__}); "
                         f"download {weights.url} to {cache}, or pass --weights PATH") from None


def _backbone_only(state: dict[str, Tensor], head: str) -> dict[str, Tensor]:
    top = head.split(".")[0]
    return {k: v for k, v in state.items() if not k.startswith(top + ".") and k != top}


def build_model(arch: str, class_names: list[str] | tuple[str, ...], weights: str | Path | None = None,
                input_size: int = 448, activation: str | None = None,
                dilate: bool = False) -> tuple[CamModel, dict[str, Any]]:
    """A new :class:`CamModel` with a fresh ``len(class_names)``-way linear head.

    ``weights``: ``None`` (random init), ``"imagenet"`` (torchvision's default weights, see
    :func:`imagenet_state_dict`) or a path to a camloc checkpoint / torchvision ``state_dict`` +
    JSON sidecar, whose backbone is copied (its head is dropped). ``dilate``: see
    :func:`dilation_kwargs`.
    """
    family = family_of(arch)
    arch_kwargs = dilation_kwargs(arch) if dilate else {}
    net = build_torchvision(arch, len(class_names), arch_kwargs)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        if str(weights) == "imagenet":
            source = imagenet_state_dict(arch)
        else:
            source_model, source_meta = load_model(weights)
            if source_meta["arch"] != arch:
                raise ModelError(f"weights {weights} are a {source_meta['arch']}, not a {arch}")
            source = source_model.net.state_dict()
            mean, std = source_meta["mean"], source_meta["std"]
        missing, unexpected = net.load_state_dict(_backbone_only(source, family.head), strict=False)
        head_top = family.head.split(".")[0]
        stray = [k for k in missing + unexpected if not k.startswith(head_top)]
        if stray:
            raise ModelError(f"weights do not fit {arch}: {len(stray)} mismatched tensors, e.g. {stray[0]}")
    head = _get(net, family.head)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    meta = {"arch": arch, "num_classes": len(class_names), "class_names": list(class_names),
            "mean": list(mean), "std": list(std), "input_size": input_size, "arch_kwargs": arch_kwargs}
    if activation:
        meta["activation"] = activation
    return CamModel(net, arch), complete_meta(meta)


def derive_coco_head(model: CamModel, meta: dict[str, Any]) -> tuple[CamModel, dict[str, Any]]:
    """Turn an ImageNet classifier into a COCO-80 one with no training (see :mod:`camloc.imagenet_coco`).

    Classes with no ImageNet counterpart get probability 0 and are listed in
    ``meta["unsupported_classes"]``; the Localizer leaves them out.
    """
    head = model.head
    if not isinstance(head, nn.Linear) or model.family.pooled_norm or meta.get("head") != "linear":
        raise ModelError(f"{meta['arch']}: only a plain GAP + linear ImageNet head can be mapped to COCO")
    if meta["arch"].startswith("mobilenet_v3"):
        raise ModelError("mobilenet_v3's ImageNet head is not GAP + linear; it cannot be mapped to COCO")
    _set(model.net, model.family.head, GroupedImageNetHead(head, coco_groups(head.out_features)))
    new_meta = dict(meta, num_classes=len(COCO_NAMES), class_names=list(COCO_NAMES),
                    coco_category_ids=list(COCO_CATEGORY_IDS), category_ids=list(COCO_CATEGORY_IDS), activation="exp",
                    head="imagenet_groups", imagenet_outputs=head.out_features,
                    unsupported_classes=list(UNSUPPORTED_COCO_CLASSES))
    return model, new_meta


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("Unsupported")]
        detail = f" ({lines[0][:100]})" if lines else ""
        raise ModelError(f"{path}: refused, not a tensors-only checkpoint{detail}: it is corrupt or holds code or "
                         "objects other than tensors (weights_only=True); use a camloc checkpoint or a torchvision "
                         "state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}); "
                         "is the file complete?") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CamModel, dict[str, Any]]:
    """Load a camloc checkpoint, or a torchvision ``state_dict`` with a JSON sidecar of the same stem.

    Returns ``(model in eval mode, meta)``; ``meta`` holds at least arch, num_classes,
    class_names, mean, std, input_size, feature_layer, activation, and coco_category_ids for
    COCO heads. Any problem is a :class:`ModelError` with a one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    payload = _torch_load(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        meta, state = payload.get("meta"), payload.get("state_dict")
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise ModelError(f"{path}: camloc checkpoint without meta/state_dict; it is damaged")
    elif isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise ModelError(f"{path}: a plain state_dict needs its JSON sidecar {sidecar.name} "
                             "(arch, num_classes, class_names, mean, std, input_size)")
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{sidecar}: not valid JSON ({exc})") from None
        state = payload
    else:
        raise ModelError(f"{path}: neither a camloc checkpoint nor a torchvision state_dict")
    meta = complete_meta(meta)
    arch_kwargs = meta.get("arch_kwargs") or {}
    if meta["head"] == "imagenet_groups":
        net = build_torchvision(meta["arch"], meta["imagenet_outputs"], arch_kwargs)
        model, meta = derive_coco_head(CamModel(net, meta["arch"]), dict(meta, head="linear"))
    else:
        model = CamModel(build_torchvision(meta["arch"], meta["num_classes"], arch_kwargs), meta["arch"])
    head_key = f"{model.family.head}.weight" if meta["head"] == "linear" else None
    if head_key in state and state[head_key].shape[0] != meta["num_classes"]:
        raise ModelError(f"{path}: the head has {state[head_key].shape[0]} outputs but the metadata "
                         f"says {meta['num_classes']} classes; checkpoint and metadata do not match")
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelError(f"{path}: weights do not fit a {meta['arch']} with {meta['num_classes']} "
                         f"classes ({detail[:160]})") from None
    return model.to(map_location).eval(), meta


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`camloc.io_utils.atomic_output`: never a half-written file."""
    with atomic_output(path, "wb") as handle:
        torch.save(obj, handle)


def checkpoint_payload(model: CamModel, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict a camloc checkpoint holds: format tag, meta, the torchvision state_dict, extras."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": complete_meta(meta),
            "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()}, **extra}


def save_checkpoint(model: CamModel, meta: dict[str, Any], path: str | Path, **extra: Any) -> None:
    """Write a camloc checkpoint atomically; ``extra`` holds tensors/plain data only (e.g. train state)."""
    atomic_torch_save(checkpoint_payload(model, meta, **extra), path)
