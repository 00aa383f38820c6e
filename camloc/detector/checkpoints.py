"""Detector checkpoints: camloc's checkpoint format with ``meta["kind"] == "detector"``, read with
``torch.load(..., weights_only=True)`` (:func:`camloc.models.read_checkpoint`) and checked field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from camloc.detector.building import DETECTOR_KIND, detector_network, parse_name
from camloc.models import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    ModelError,
    check_state_dict,
    check_version,
    load_model,
    read_checkpoint,
)
from camloc.models.meta import IMAGENET_MEAN, IMAGENET_STD, complete_meta


def is_detector_meta(meta: Any) -> bool:
    """Whether checkpoint metadata describes a detector (``kind: "detector"``)."""
    return isinstance(meta, dict) and meta.get("kind") == DETECTOR_KIND


def checkpoint_kind(path: str | Path) -> str:
    """``"detector"`` or ``"classifier"``: what a checkpoint file holds (read with ``weights_only=True``;
    a plain ``state_dict`` + JSON sidecar is a classifier). A file that cannot be read is a ``ModelError``."""
    payload = read_checkpoint(path)
    meta = payload.get("meta") if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT else None
    return DETECTOR_KIND if is_detector_meta(meta) else "classifier"


def complete_detector_meta(meta: Any, source: str = "detector metadata") -> dict[str, Any]:
    """Check a detector's metadata: ``arch`` a detector name (:func:`~camloc.detector.building.parse_name`),
    classes, category ids, ``mean``/``std`` and ``input_size`` as a classifier's (the same checks:
    :func:`camloc.models.complete_meta` on the backbone's view of them), ``norm`` ``frozen`` or ``batch``.
    Anything else is a :class:`~camloc.models.ModelError` naming the field."""
    if not is_detector_meta(meta):
        raise ModelError(f"{source}: not a detector's metadata (kind must be {DETECTOR_KIND!r})")
    for key in ("arch", "num_classes", "class_names", "category_ids", "input_size", "norm"):
        if key not in meta:
            raise ModelError(f"{source}: detector metadata lacks {key!r}")
    _, backbone = parse_name(meta["arch"])
    if meta["norm"] not in ("frozen", "batch"):
        raise ModelError(f"{source}: norm must be 'frozen' or 'batch', got {meta['norm']!r}")
    as_classifier = {k: meta[k] for k in ("num_classes", "class_names", "category_ids", "input_size")}
    checked = complete_meta({**as_classifier, "arch": backbone, "mean": meta.get("mean", IMAGENET_MEAN),
                             "std": meta.get("std", IMAGENET_STD)}, source)
    return {**meta, **{k: checked[k] for k in ("class_names", "category_ids", "mean", "std", "input_size")}}


def detector_payload(model: nn.Module, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict a detector checkpoint holds: camloc's format tag, the metadata, the network's ``state_dict``."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": complete_detector_meta(meta),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}


def load_detector(path: str | Path, map_location: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(network in eval mode, meta, the checkpoint's other entries)`` of a detector checkpoint; anything
    else — a classifier, a damaged file, weights that do not fit the metadata — is a ``ModelError``."""
    path = Path(path)
    payload = read_checkpoint(path)
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        raise ModelError(f"{path}: not a camloc checkpoint; a detector checkpoint is written by "
                         "python -m train --detector")
    if not is_detector_meta(payload.get("meta")):
        raise ModelError(f"{path}: a classifier checkpoint, not a detector; use camloc.localize.Localizer for it, "
                         "or train a detector with python -m train --detector")
    check_version(payload.get("version"), path)
    meta = complete_detector_meta(payload["meta"], f"{path} (meta)")
    state = payload.get("state_dict")
    check_state_dict(state, path)
    model = detector_network(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ModelError(f"{path}: weights do not fit a {meta['arch']} with {meta['num_classes']} classes "
                         f"({detail[:160]})") from None
    extras = {k: v for k, v in payload.items() if k not in ("format", "version", "meta", "state_dict")}
    return model.to(map_location).eval(), meta, extras


def load_any(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` of a checkpoint of either kind: a detector's network and metadata (``kind: detector``),
    or a classifier's :class:`~camloc.models.CamModel` (:func:`camloc.models.load_model`)."""
    if checkpoint_kind(path) == DETECTOR_KIND:
        model, meta, _ = load_detector(path, map_location)
        return model, meta
    return load_model(path, map_location)
