"""New models: a fresh head on a torchvision backbone (random, ImageNet or a checkpoint's weights), and
a COCO-80 head derived from an ImageNet classifier with no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from camloc.models.cammodel import CamModel
from camloc.models.checkpoints import load_model
from camloc.models.families import ModelError, build_torchvision, dilation_kwargs, family_of, get_module
from camloc.models.meta import IMAGENET_MEAN, IMAGENET_STD, complete_meta


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
    head = get_module(net, family.head)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    meta = {"arch": arch, "num_classes": len(class_names), "class_names": list(class_names),
            "mean": list(mean), "std": list(std), "input_size": input_size, "arch_kwargs": arch_kwargs}
    if activation:
        meta["activation"] = activation
    return CamModel(net, arch), complete_meta(meta)
