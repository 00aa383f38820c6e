"""Box recipes: one image's class maps and probabilities in, scored boxes out — chosen by name.

A recipe has two steps, both pure functions of their inputs:

* :meth:`Recipe.select` — *class gating*: which classes of an image get boxes at all, from the
  probabilities of every class ``(B, K)``;
* :meth:`Recipe.boxes` — the raw maps ``(k, h, w)`` of the selected classes (no ReLU, no
  normalisation, on any device), their probabilities ``(k,)`` and the original image size
  ``(H, W)`` → :class:`ScoredBoxes` (numpy, on the CPU).

Recipes are small frozen dataclasses registered under a name (:data:`RECIPES`); the Localizer,
``python -m eval --recipe``, the app and ``bench/recipes.py`` pick them with
:func:`make_recipe`. A new recipe is one decorated class.

``seed`` is the course recipe, kept forever as the reference every other recipe is compared to:
upsample, ReLU, min-max, Otsu (or a fraction of the max), every outer contour (or the largest),
``score = mean heat inside the box × p(class)``, every class of every image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from camloc.boxes import BOX_MODES, BoxSet, heatmaps_to_boxes, parse_threshold
from camloc.cam import normalize_maps

#: Classes normalised and boxed together: 4 full-resolution maps stay in the CPU cache, which
#: measured ~1.4× faster than all 80 at once for 640×480 images (min 73 ms vs 119 ms here).
BOX_CHUNK = 4


@dataclass(frozen=True)
class ScoredBoxes:
    """Scored boxes of one image: row ``i`` is class position ``class_index[i]`` (in the maps given
    to :meth:`Recipe.boxes`), box ``xywh[i]`` = ``[x, y, w, h]`` in original pixels, ``score[i]``."""

    class_index: np.ndarray  # (n,) int64
    xywh: np.ndarray  # (n, 4) float64
    score: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.class_index)

    @classmethod
    def empty(cls) -> ScoredBoxes:
        return cls(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))


def parse_class_selection(selection: str | Sequence[int]) -> tuple[str, float] | list[int]:
    """``"all"``, ``"topk:N"``, ``"prob:P"`` or explicit class indices → a normalised selection."""
    if not isinstance(selection, str):
        return [int(k) for k in selection]
    kind, _, value = selection.strip().lower().partition(":")
    try:
        if kind == "all" and not value:
            return ("all", 0.0)
        if kind == "topk" and int(value) >= 1:
            return ("topk", float(int(value)))
        if kind == "prob" and 0.0 <= float(value) <= 1.0:
            return ("prob", float(value))
    except ValueError:
        pass
    raise ValueError(f"class selection must be 'all', 'topk:N' (N ≥ 1) or 'prob:P' (0 ≤ P ≤ 1), got {selection!r}")


def select_classes(probs: Tensor, selection: str | Sequence[int], supported: Tensor | None = None) -> Tensor:
    """Boolean ``(B, K)``: the classes ``selection`` picks per image, among the ``supported`` ones.

    ``all``: every class; ``topk:N``: the N most probable supported classes; ``prob:P``: classes
    with ``p ≥ P``; a list: those class indices.
    """
    chosen = parse_class_selection(selection)
    supported = torch.ones(probs.shape[-1], dtype=torch.bool, device=probs.device) if supported is None else supported
    if isinstance(chosen, list):
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[:, chosen] = True
    elif chosen[0] == "all":
        mask = torch.ones_like(probs, dtype=torch.bool)
    elif chosen[0] == "topk":
        ranked = probs.masked_fill(~supported, -1.0)
        top = ranked.topk(min(int(chosen[1]), probs.shape[1]), dim=1).indices
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top, True)
    else:
        mask = probs >= chosen[1]
    return mask & supported


@dataclass(frozen=True)
class Recipe:
    """Base of every recipe: ``classes`` (the gating option) and the two steps."""

    name: ClassVar[str] = ""
    classes: str | tuple[int, ...] = "all"

    def __post_init__(self) -> None:
        chosen = parse_class_selection(self.classes)
        if isinstance(chosen, list):
            object.__setattr__(self, "classes", tuple(chosen))

    def select(self, probs: Tensor, supported: Tensor | None = None) -> Tensor:
        """Boolean ``(B, K)``: the classes that get boxes (see :func:`select_classes`)."""
        return select_classes(probs, self.classes, supported)

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        raise NotImplementedError

    def with_options(self, **options: Any) -> Recipe:
        """The same recipe with some parameters changed (``None`` values are ignored)."""
        given = _known_options(type(self), options)
        return replace(self, **given) if given else self

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter names and their defaults."""
        return {f.name: f.default for f in fields(cls)}


RECIPES: dict[str, type[Recipe]] = {}


def register(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator: make a recipe selectable as ``name``."""
    def add(cls: type[Recipe]) -> type[Recipe]:
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is registered twice")
        cls.name = name
        RECIPES[name] = cls
        return cls
    return add


def make_recipe(name: str | Recipe, **options: Any) -> Recipe:
    """The recipe registered as ``name`` with ``options`` (``None`` values keep the defaults)."""
    if isinstance(name, Recipe):
        return name.with_options(**options)
    if name not in RECIPES:
        raise ValueError(f"unknown box recipe {name!r}; choose one of {', '.join(RECIPES)}")
    cls = RECIPES[name]
    return cls(**_known_options(cls, options))


def _known_options(cls: type[Recipe], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without ``None`` values; an option the recipe does not have is a ``ValueError``."""
    given = {k: v for k, v in options.items() if v is not None}
    known = cls.parameters()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"recipe {cls.name!r} has no option {unknown[0]!r}; its options are {', '.join(known)}")
    return given


# ----------------------------------------------------------------------------------------------
# shared steps
# ----------------------------------------------------------------------------------------------

def boxes_from_raw_maps(raw_maps: Tensor, size: tuple[int, int], threshold: str | float = "otsu",
                        mode: str = "all", chunk: int = BOX_CHUNK) -> BoxSet:
    """Raw maps ``(k, h, w)`` → upsample/ReLU/normalise to ``size`` → :func:`heatmaps_to_boxes`,
    a few classes at a time; ``class_index`` refers to positions along ``raw_maps``."""
    parts = []
    for start in range(0, len(raw_maps), chunk):
        found = heatmaps_to_boxes(normalize_maps(raw_maps[start:start + chunk], size).cpu().numpy(), threshold, mode)
        parts.append(BoxSet(found.class_index + start, found.xywh, found.heat))
    if not parts:
        return BoxSet(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0))
    return BoxSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("class_index", "xywh", "heat")))


# ----------------------------------------------------------------------------------------------
# the recipes
# ----------------------------------------------------------------------------------------------

@register("seed")
@dataclass(frozen=True)
class Seed(Recipe):
    """The course recipe, bit for bit (see :mod:`camloc.boxes`).

    For each class map: ``m = minmax(ReLU(upsample(M)))``; foreground ``uint8(255·m) > otsu`` (or
    ``≥ threshold·255``); every outer contour's bounding box (``mode="largest"``: the contour of
    largest area); ``score = mean(m inside the box) × p``. A map with no foreground gives the
    whole image.
    """

    threshold: str | float = "otsu"
    mode: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        if self.mode not in BOX_MODES:
            raise ValueError(f"box mode must be one of {BOX_MODES}, got {self.mode!r}")

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        found = boxes_from_raw_maps(raw_maps, size, self.threshold, self.mode)
        score = found.heat * probs.double().cpu().numpy()[found.class_index]
        return ScoredBoxes(found.class_index, found.xywh.astype(np.float64), score)


DEFAULT_RECIPE = "seed"
