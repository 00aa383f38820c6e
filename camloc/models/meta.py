"""Model metadata: the fields camloc reads (arch, classes, normalisation, input size, ...), checked once.

Every field must have its documented type and range, or a :class:`~camloc.models.families.ModelError`
names the source, the field and what is wrong; nothing is converted silently.
"""

from __future__ import annotations

import math
from typing import Any

import torchvision

from camloc.models.classes import COCO_CATEGORY_IDS, is_coco_head
from camloc.models.families import ModelError, dilation_or_none, family_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Network input sizes a checkpoint may ask for (pixels a side).
DEFAULT_INPUT_SIZE, MIN_INPUT_SIZE, MAX_INPUT_SIZE = 448, 32, 4096
ACTIVATIONS = ("sigmoid", "softmax", "exp")
INT64 = 2**63


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
    if not isinstance(kwargs, dict) or (kwargs and kwargs != dilation_or_none(meta["arch"])):
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
