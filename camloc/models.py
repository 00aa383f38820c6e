"""GAP classifiers for CAM: build any torchvision family, find its feature layer and head, save/load.

A :class:`CamModel` wraps an *unmodified* torchvision classifier (so its ``state_dict`` is plain
torchvision) and returns, from one forward pass, the logits and the feature map ``A`` that
enters global average pooling. :meth:`CamModel.cam_terms` turns ``A`` into the three terms of
the exact CAM identity ``class_activation_maps(A', W).mean((-2, -1)) + b == logits``.

Checkpoints are data, never code: every load uses ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
import zipfile
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
#: Network input sizes a checkpoint may ask for (pixels a side).
DEFAULT_INPUT_SIZE, MIN_INPUT_SIZE, MAX_INPUT_SIZE = 448, 32, 4096
ACTIVATIONS = ("sigmoid", "softmax", "exp")
INT64 = 2**63


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


def _dilation_or_none(arch: str) -> dict[str, Any] | None:
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

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _id_list(meta: dict[str, Any], key: str, source: str) -> list[int]:
    ids = meta[key]
    if (not isinstance(ids, (list, tuple)) or len(ids) != meta["num_classes"]
            or not all(_is_int(i) and -INT64 <= i < INT64 for i in ids)):
        raise ModelError(f"{source}: {key} must list one integer category id per class "
                         f"({meta['num_classes']}), got {str(ids)[:80]}")
    if len(set(ids)) != len(ids):
        raise ModelError(f"{source}: {key} repeats an id; each class needs its own category id")
    return list(ids)


def _triple(values: Any, key: str, low: float, high: float, source: str) -> list[float]:
    if (not isinstance(values, (list, tuple)) or len(values) != 3
            or not all(_is_number(v) and low <= v <= high for v in values)):
        raise ModelError(f"{source}: {key} must be 3 numbers (R, G, B) in [{low:g}, {high:g}], "
                         f"got {str(values)[:80]}")
    return [float(v) for v in values]


def _check_fields(meta: dict[str, Any], source: str) -> None:
    """Types and ranges of the metadata fields camloc reads; the first bad one is a :class:`ModelError`."""
    family = family_of(meta["arch"])
    if meta["arch"] not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"{source}: torchvision has no classifier named {meta['arch']!r}")
    if not _is_int(meta["num_classes"]) or meta["num_classes"] < 1:
        raise ModelError(f"{source}: num_classes must be a positive integer, got {meta['num_classes']!r}")
    names = meta["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{source}: class_names must be a list of strings, got {str(names)[:80]}")
    if len(names) != meta["num_classes"]:
        raise ModelError(f"{source}: metadata lists {len(names)} class names for {meta['num_classes']} "
                         "classes; they must agree")
    size = meta.get("input_size", DEFAULT_INPUT_SIZE)
    if not _is_int(size) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise ModelError(f"{source}: input_size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
                         f"got {size!r}")
    if meta.get("feature_layer", family.feature_layer) != family.feature_layer:
        raise ModelError(f"{source}: feature_layer {meta['feature_layer']!r} is not where a {meta['arch']} "
                         f"pools ({family.feature_layer!r}); remove it or fix it")
    if meta.get("activation", "sigmoid") not in ACTIVATIONS:
        raise ModelError(f"{source}: activation must be one of {', '.join(ACTIVATIONS)}, got "
                         f"{meta['activation']!r}")
    head = meta.get("head", "linear")
    if head not in ("linear", "imagenet_groups"):
        raise ModelError(f"{source}: head must be 'linear' or 'imagenet_groups', got {head!r}")
    outputs = meta.get("imagenet_outputs")
    if head == "imagenet_groups" and (not _is_int(outputs) or outputs < 1):
        raise ModelError(f"{source}: an imagenet_groups head needs imagenet_outputs, a positive integer; "
                         f"got {outputs!r}")
    kwargs = meta.get("arch_kwargs", {})
    if not isinstance(kwargs, dict) or (kwargs and kwargs != _dilation_or_none(meta["arch"])):
        raise ModelError(f"{source}: arch_kwargs may only hold camloc's dilation setting (or be empty), "
                         f"got {str(kwargs)[:80]}")
    thresholds = meta.get("class_thresholds")
    if thresholds is not None and (not isinstance(thresholds, (list, tuple)) or len(thresholds) != meta["num_classes"]
                                   or not all(_is_number(t) and 0 <= t <= 1 for t in thresholds)):
        raise ModelError(f"{source}: class_thresholds must list one probability in [0, 1] per class "
                         f"({meta['num_classes']}), got {str(thresholds)[:80]}; recompute them with "
                         "python -m camloc.calibration or remove them")
    unsupported = meta.get("unsupported_classes", [])
    if not isinstance(unsupported, (list, tuple)) or not all(isinstance(n, str) and n in names for n in unsupported):
        raise ModelError(f"{source}: unsupported_classes must list some of the class names, got "
                         f"{str(unsupported)[:80]}")


def complete_meta(meta: Any, source: str = "model metadata") -> dict[str, Any]:
    """Check model metadata and fill the keys DESIGN.md promises (``feature_layer``, ``mean``,
    ``std``, ``input_size``, ``coco_category_ids``, ``category_ids``, ``activation``).

    Every field camloc reads must have its documented type and range — ``arch`` a supported
    torchvision name, ``num_classes`` a positive integer, ``class_names`` that many strings,
    ``mean``/``std`` three finite numbers (std > 0), ``input_size`` an integer in
    [32, 4096], category ids one distinct integer per class, ... — or a :class:`ModelError` names
    ``source``, the field and what is wrong. Nothing is converted silently (``6.0`` classes, a
    string of class names, ``NaN`` statistics are refused). ``category_ids`` (the dataset's category
    id of each output) equals ``coco_category_ids`` for COCO heads; a head trained on another
    COCO-format dataset stores its own.
    """
    if not isinstance(meta, dict):
        raise ModelError(f"{source}: metadata must be a JSON object with arch, num_classes, class_names; "
                         f"got {type(meta).__name__}")
    meta = dict(meta)
    for key in ("arch", "num_classes", "class_names"):
        if key not in meta:
            raise ModelError(f"{source}: model metadata lacks {key!r}; it needs arch, num_classes, class_names")
    _check_fields(meta, source)
    family = family_of(meta["arch"])
    meta["class_names"] = list(meta["class_names"])
    meta["mean"] = _triple(meta.get("mean", IMAGENET_MEAN), "mean", -1e3, 1e3, source)
    meta["std"] = _triple(meta.get("std", IMAGENET_STD), "std", 1e-6, 1e3, source)
    meta.setdefault("feature_layer", family.feature_layer)
    meta.setdefault("input_size", DEFAULT_INPUT_SIZE)
    meta.setdefault("head", "linear")
    if is_coco_head(meta["class_names"]):
        meta.setdefault("coco_category_ids", list(COCO_CATEGORY_IDS))
    for key in ("coco_category_ids", "category_ids"):
        if key in meta:
            meta[key] = _id_list(meta, key, source)
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

def _has_compressed_entries(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())


def read_checkpoint(path: str | Path) -> Any:
    """The object a checkpoint file holds, loaded with ``torch.load(..., weights_only=True)``.

    A missing file, a damaged or truncated archive, a malformed pickle, or a pickle that would run
    code or build objects other than tensors and plain data is a :class:`ModelError`.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ModelError(f"{path}: no such checkpoint file")
        if zipfile.is_zipfile(path) and _has_compressed_entries(path):
            raise ModelError(f"{path}: refused, its archive has compressed entries (torch.save writes none; a "
                             "compressed checkpoint can expand without bound); re-save it with torch.save")
        with warnings.catch_warnings():  # torch's notes on odd pickles; the outcome is reported below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("Unsupported")]
        detail = f" ({lines[0][:100]})" if lines else ""
        raise ModelError(f"{path}: refused, not a tensors-only checkpoint{detail}: it is corrupt or holds code or "
                         "objects other than tensors (weights_only=True); use a camloc checkpoint or a torchvision "
                         "state_dict") from None
    except Exception as exc:  # a malformed archive or pickle fails with any exception type
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}); "
                         "is the file complete?") from None


def _read_sidecar(path: Path) -> Any:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ModelError(f"{path}: a plain state_dict needs its JSON sidecar {sidecar.name} "
                         "(arch, num_classes, class_names, mean, std, input_size)")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{sidecar}: not valid JSON ({exc.__class__.__name__}: {str(exc)[:100]})") from None


def check_state_dict(state: Any, path: str | Path) -> None:
    """A ``state_dict`` camloc will load: string keys, dense real tensors, every float finite, and
    BatchNorm running variances ≥ 0; anything else is a :class:`ModelError` naming the tensor."""
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path}: the weights are not a state_dict (a dict of tensors)")
    for key, tensor in state.items():
        if not isinstance(key, str) or not isinstance(tensor, Tensor):
            raise ModelError(f"{path}: the weights hold {key!r}, a {type(tensor).__name__}; expected named tensors")
        if tensor.layout != torch.strided or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ModelError(f"{path}: tensor {key} is {tensor.dtype}/{tensor.layout}; expected dense real numbers")
        if tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size():
            raise ModelError(f"{path}: tensor {key} of shape {tuple(tensor.shape)} is a view larger than its data; "
                             "the checkpoint is damaged or crafted")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: tensor {key} holds NaN or inf values (a diverged or damaged checkpoint); "
                             "use an earlier checkpoint")
        if key.endswith("running_var") and bool((tensor < 0).any()):
            raise ModelError(f"{path}: tensor {key} has negative variances; the checkpoint is damaged")


def _check_head(state: dict[str, Tensor], meta: dict[str, Any], path: Path) -> None:
    """The head's size must match the metadata, checked before a network of that size is built."""
    head = family_of(meta["arch"]).head
    groups = meta["head"] == "imagenet_groups"
    key = f"{head}.linear.weight" if groups else f"{head}.weight"
    expected = meta["imagenet_outputs"] if groups else meta["num_classes"]
    tensor = state.get(key)
    if tensor is None or tensor.ndim != 2:
        raise ModelError(f"{path}: the weights have no {meta['arch']} head {key}; checkpoint and metadata do not "
                         "match")
    if tensor.shape[0] != expected:
        raise ModelError(f"{path}: the head has {tensor.shape[0]} outputs but the metadata says {expected} "
                         f"{'ImageNet outputs' if groups else 'classes'}; checkpoint and metadata do not match")


def load_checkpoint(path: str | Path,
                    map_location: str | torch.device = "cpu") -> tuple[CamModel, dict[str, Any], dict[str, Any]]:
    """:func:`load_model`, plus the checkpoint's other entries (``train_state``, ``epoch``, ...;
    empty for a plain state_dict)."""
    path = Path(path)
    payload = read_checkpoint(path)
    extras: dict[str, Any] = {}
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        meta, state = payload.get("meta"), payload.get("state_dict")
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise ModelError(f"{path}: camloc checkpoint without meta/state_dict; it is damaged")
        extras = {k: v for k, v in payload.items() if k not in ("format", "version", "meta", "state_dict")}
        source = f"{path} (meta)"
    elif isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        meta, state, source = _read_sidecar(path), payload, str(path.with_suffix(".json"))
    else:
        raise ModelError(f"{path}: neither a camloc checkpoint nor a torchvision state_dict")
    meta = complete_meta(meta, source)
    check_state_dict(state, path)
    _check_head(state, meta, path)
    arch_kwargs = meta.get("arch_kwargs", {})
    if meta["head"] == "imagenet_groups":
        net = build_torchvision(meta["arch"], meta["imagenet_outputs"], arch_kwargs)
        model, meta = derive_coco_head(CamModel(net, meta["arch"]), dict(meta, head="linear"))
    else:
        model = CamModel(build_torchvision(meta["arch"], meta["num_classes"], arch_kwargs), meta["arch"])
    expected = model.net.state_dict()
    for key, tensor in state.items():
        if key in expected and tensor.is_floating_point() != expected[key].is_floating_point():
            raise ModelError(f"{path}: tensor {key} is {tensor.dtype} where the {meta['arch']} has "
                             f"{expected[key].dtype}; the checkpoint is damaged")
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelError(f"{path}: weights do not fit a {meta['arch']} with {meta['num_classes']} "
                         f"classes ({detail[:160]})") from None
    return model.to(map_location).eval(), meta, extras


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CamModel, dict[str, Any]]:
    """Load a camloc checkpoint, or a torchvision ``state_dict`` with a JSON sidecar of the same stem.

    Returns ``(model in eval mode, meta)``; ``meta`` holds at least arch, num_classes,
    class_names, mean, std, input_size, feature_layer, activation, and coco_category_ids for
    COCO heads. The checkpoint is data, never code (``weights_only=True``); metadata fields must
    have their documented types and ranges (see :func:`complete_meta`) and the weights must be
    finite (see :func:`check_state_dict`). Any problem is a :class:`ModelError` with a one-line
    reason.
    """
    model, meta, _ = load_checkpoint(path, map_location)
    return model, meta


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
