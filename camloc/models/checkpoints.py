"""Checkpoints: read (data, never code: ``torch.load(..., weights_only=True)``), check, load and save.

A camloc checkpoint is a dict ``{"format": "camloc", "version", "meta", "state_dict", ...extras}``; a
plain torchvision ``state_dict`` loads with a JSON sidecar of the same stem.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camloc.io.atomic import atomic_output
from camloc.models.cammodel import CamModel, derive_coco_head
from camloc.models.families import ModelError, build_torchvision, family_of
from camloc.models.meta import complete_meta

CHECKPOINT_FORMAT = "camloc"
CHECKPOINT_VERSION = 1


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
    """``torch.save`` through :func:`camloc.io.atomic.atomic_output`: never a half-written file."""
    with atomic_output(path, "wb") as handle:
        torch.save(obj, handle)


def checkpoint_payload(model: CamModel, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict a camloc checkpoint holds: format tag, meta, the torchvision state_dict, extras."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": complete_meta(meta),
            "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()}, **extra}


def save_checkpoint(model: CamModel, meta: dict[str, Any], path: str | Path, **extra: Any) -> None:
    """Write a camloc checkpoint atomically; ``extra`` holds tensors/plain data only (e.g. train state)."""
    atomic_torch_save(checkpoint_payload(model, meta, **extra), path)
