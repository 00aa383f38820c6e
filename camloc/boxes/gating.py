"""Class gating: which classes of an image get boxes at all, from every class's probability.

One check of explicit class indices (:func:`class_indices`) serves every caller; a selection string
(``all``, ``topk:N``, ``prob:P``, ``calibrated`` or several joined by commas) becomes a boolean
``(B, K)`` mask (:func:`select_classes`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

GATES = ("all", "topk", "prob", "calibrated")
#: The ``calibrated`` gate's threshold of every class for a model without calibrated thresholds.
CALIBRATION_FLOOR = 0.001


def class_indices(values: Sequence[int] | Tensor | np.ndarray, num_classes: int | None = None) -> list[int]:
    """Explicit class indices, checked once for every caller (``classes=`` of a recipe or a Localizer, of
    :meth:`~camloc.pipeline.Localizer.analyze` and of :meth:`~camloc.pipeline.Localizer.detections`):
    each an integer — Python, NumPy or from an integer tensor; never a bool, never a float such as 1.5 —
    with ``0 ≤ k < num_classes`` when ``num_classes`` is given. Otherwise one ``ValueError`` that names
    the values and what is allowed."""
    if isinstance(values, str):
        raise ValueError(f"class indices must be a sequence of integers, got the string {values!r}")
    try:
        items = values.tolist() if isinstance(values, (Tensor, np.ndarray)) else list(values)
    except TypeError:
        raise ValueError(f"class indices must be a sequence of integers, got {values!r}") from None
    items = items if isinstance(items, list) else [items]  # a 0-d tensor or array: one index
    wrong = [k for k in items if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral)]
    if wrong:
        raise ValueError(f"class indices must be integers (not {wrong[0]!r}), got {items!r}")
    indices = [int(k) for k in items]
    outside = [k for k in indices if k < 0 or (num_classes is not None and k >= num_classes)]
    if outside:
        allowed = "non-negative" if num_classes is None else f"0 to {num_classes - 1} for {num_classes} classes"
        raise ValueError(f"class indices {outside} are out of range (allowed: {allowed})")
    return indices


def parse_class_selection(selection: str | Sequence[int]) -> tuple[tuple[str, float], ...] | list[int]:
    """Class gating → a normalised selection: explicit class indices (a list), or a string of
    ``"all"``, ``"topk:N"`` (N ≥ 1), ``"prob:P"`` (0 ≤ P ≤ 1), ``"calibrated"`` (each class's own
    threshold, :mod:`camloc.calibration`), or several of the last three joined by commas
    (``"topk:10,prob:0.05"``: the 10 most probable classes that also have p ≥ 0.05)."""
    if not isinstance(selection, str):
        return class_indices(selection)
    parts = []
    for part in selection.strip().lower().split(","):
        kind, _, value = part.strip().partition(":")
        try:
            if kind in ("all", "calibrated") and not value:
                parts.append((kind, 0.0))
            elif kind == "topk" and value.strip().isdigit() and int(value) >= 1:
                parts.append(("topk", float(int(value))))
            elif kind == "prob" and 0.0 <= float(value) <= 1.0:
                parts.append(("prob", float(value)))
            else:
                parts = []
                break
        except ValueError:
            parts = []
            break
    kinds = [kind for kind, _ in parts]
    if parts and len(set(kinds)) == len(kinds) and ("all" not in kinds or len(kinds) == 1):
        return tuple(parts)
    raise ValueError(f"class selection must be 'all', 'topk:N' (N ≥ 1), 'prob:P' (0 ≤ P ≤ 1), 'calibrated', "
                     f"several joined by commas as 'topk:N,prob:P', or class indices; got {selection!r}")


def select_classes(probs: Tensor, selection: str | Sequence[int], supported: Tensor | None = None,
                   thresholds: Sequence[float] | None = None) -> Tensor:
    """Boolean ``(B, K)``: the classes ``selection`` picks per image, among the ``supported`` ones.

    ``all``: every class; ``topk:N``: the N most probable supported classes; ``prob:P``: classes
    with ``p ≥ P``; ``calibrated``: classes with ``p_k ≥ thresholds[k]`` (default: 0.001 for every
    class); several: the intersection; a list: those class indices.
    """
    chosen = parse_class_selection(selection)
    num_classes = probs.shape[-1]
    supported = torch.ones(num_classes, dtype=torch.bool, device=probs.device) if supported is None else supported
    if isinstance(chosen, list):
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[:, class_indices(chosen, num_classes)] = True
        return mask & supported
    mask = torch.ones_like(probs, dtype=torch.bool)
    for kind, value in chosen:
        if kind == "topk":
            ranked = probs.masked_fill(~supported, -1.0)
            top = ranked.topk(min(int(value), num_classes), dim=1).indices
            mask &= torch.zeros_like(mask).scatter_(1, top, True)
        elif kind == "prob":
            mask &= probs >= value
        elif kind == "calibrated":
            floors = torch.full((num_classes,), CALIBRATION_FLOOR) if thresholds is None else torch.as_tensor(
                thresholds, dtype=torch.float64)
            if floors.shape != (num_classes,):
                raise ValueError(f"calibrated gating needs one threshold per class ({num_classes}), got "
                                 f"{tuple(floors.shape)}")
            mask &= probs >= floors.to(probs.device, probs.dtype)
    return mask & supported
