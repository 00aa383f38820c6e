"""Box recipes' base and registry: one image's class maps and probabilities in, scored boxes out — chosen by name.

A recipe has two steps, both pure functions of their inputs:

* :meth:`Recipe.select` — *class gating*: which classes of an image get boxes at all, from the
  probabilities of every class ``(B, K)``;
* :meth:`Recipe.boxes` — the raw maps ``(k, h, w)`` of the selected classes (no ReLU, no
  normalisation, on any device), their probabilities ``(k,)``, the original image size
  ``(H, W)`` and where the maps' cells sit in it (``frame``: a :class:`~camloc.cam.frame.MapFrame`, or
  ``None``: the grid stretched over the image) → :class:`ScoredBoxes` (numpy, on the CPU).

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

from camloc.boxes.device import DeviceMaps, device_maps
from camloc.boxes.gating import parse_class_selection, select_classes
from camloc.cam.frame import MapFrame
from camloc.options import known_options
from camloc.runtime.memory import chunks, memory_budget

#: The ``box_scale`` option that traces boxes at the image's own resolution (stored as ``None``).
FULL_RESOLUTION = "full"
#: Largest ``box_scale``: 64 × a 14×14 grid is 896 pixels a side, beyond any photo's detail in a CAM.
MAX_BOX_SCALE = 64
#: Classes normalised and boxed together: 4 full-resolution maps stay in the CPU cache, which
#: measured ~1.4× faster than all 80 at once for 640×480 images (min 73 ms vs 119 ms here).
BOX_CHUNK = 4


def host_chunks(count: int, size: tuple[int, int], bytes_per_pixel: int, budget: int | None = None) -> list[slice]:
    """Consecutive slices of ``count`` maps normalised and boxed together on the CPU at the image's ``size``
    (``bytes_per_pixel``: a recipe's working memory per map and pixel): :data:`BOX_CHUNK` at a time, fewer where
    they would not fit ``budget`` bytes (default: :func:`~camloc.runtime.memory.memory_budget` of the CPU), one
    at a time at least — so one image's box stage is bounded whatever its size and number of classes."""
    per_map = size[0] * size[1] * bytes_per_pixel
    return list(chunks(count, per_map, min(memory_budget("cpu", budget), BOX_CHUNK * per_map)))


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


@dataclass(frozen=True)
class BatchBoxes:
    """Scored boxes of a batch: row ``i`` is image ``image[i]`` (position in the batch), class index
    ``class_index[i]`` (the model's), box ``xywh[i]`` in that image's pixels, ``score[i]``; sorted by image,
    then class, best first."""

    image: np.ndarray  # (n,) int64
    class_index: np.ndarray  # (n,) int64
    xywh: np.ndarray  # (n, 4) float64
    score: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def concatenate(cls, parts: Sequence[BatchBoxes]) -> BatchBoxes:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def of_image(self, index: int) -> BatchBoxes:
        return self.rows(self.image == index)

    def rows(self, keep: np.ndarray) -> BatchBoxes:
        """The boxes at positions or mask ``keep``."""
        return BatchBoxes(self.image[keep], self.class_index[keep], self.xywh[keep], self.score[keep])


@dataclass(frozen=True)
class Recipe:
    """Base of every recipe: ``classes`` (the gating option), ``flip`` and the two steps.

    ``flip`` refines the maps before any box is drawn: each class map (and probability) is the
    mean of the image's and of the mirrored image's, mirrored back (two forward passes). It
    centres maps that a strided network's sampling grid pushes off the object and averages out
    noise; the Localizer runs the views a recipe needs (:meth:`camloc.pipeline.localizer.Localizer.views`).
    """

    name: ClassVar[str] = ""
    classes: str | tuple[int, ...] = "all"
    flip: bool = False
    #: Maps averaged over six views (scales 0.75 / 1 / 1.25, each with its mirror) before any box is drawn.
    tta: bool = False
    #: The ``calibrated`` gate's per-class thresholds (the model's ``class_thresholds``; the Localizer
    #: sets them); ``None``: 0.001 for every class.
    thresholds: tuple[float, ...] | None = None
    #: How the Localizer lays this recipe's maps on the image unless told (``align``): ``none`` (the grid stretched
    #: over the image, the course's convention) or ``measured`` (each cell where the model's geometry says it looks).
    default_align: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        chosen = parse_class_selection(self.classes)
        if isinstance(chosen, list):
            object.__setattr__(self, "classes", tuple(chosen))
        for option in ("flip", "tta"):
            if not isinstance(getattr(self, option), (bool, np.bool_)):
                raise ValueError(f"{option} must be True or False, got {getattr(self, option)!r}")
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

    def select(self, probs: Tensor, supported: Tensor | None = None) -> Tensor:
        """Boolean ``(B, K)``: the classes that get boxes (see :func:`select_classes`)."""
        return select_classes(probs, self.classes, supported, self.thresholds)

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int], budget: int | None = None,
              frame: MapFrame | None = None) -> ScoredBoxes:
        raise NotImplementedError

    def batch_boxes(self, raw_maps: Tensor, probs: Tensor, classes: Tensor, gate: Tensor,
                    sizes: Sequence[tuple[int, int]], budget: int | None = None, frame: MapFrame | None = None
                    ) -> BatchBoxes:
        """Scored boxes of a whole batch: raw maps ``(B, k, h, w)`` of the class indices ``classes (k,)``,
        probabilities ``(B, K)`` of every class, ``gate (B, K)`` the classes to box (held ones only),
        each image's ``(H, W)`` and the maps' ``frame`` in every image. Here: :meth:`boxes` image by image (a few
        maps at a time); a recipe that can box the whole batch at once overrides it (the same boxes, its working
        memory within ``budget`` bytes)."""
        held = gate[:, classes].cpu()
        parts = []
        for b, size in enumerate(sizes):
            rows = torch.nonzero(held[b]).flatten()
            if not len(rows):
                continue
            chosen = classes.cpu()[rows]
            found = self.boxes(raw_maps[b, rows.to(raw_maps.device)], probs[b, chosen.to(probs.device)], size, budget,
                               **framed(frame))
            parts.append(BatchBoxes(np.full(len(found), b, np.int64), chosen.numpy()[found.class_index],
                                    found.xywh, found.score))
        return BatchBoxes.concatenate(parts)

    #: Whether :meth:`device_stage` / :meth:`trace` / :meth:`finish` exist: the per-pixel work on the maps'
    #: device, then only packed masks traced on the CPU (:mod:`camloc.boxes.device`).
    on_device: ClassVar[bool] = False

    def device_boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int], frame: MapFrame | None = None
                     ) -> ScoredBoxes:
        """:meth:`boxes` with the map stage on ``raw_maps``' device (the three steps in one process)."""
        maps = self.device_stage(raw_maps, size, frame)
        return self.finish(maps, *self.trace(maps.packed, size[1]), probs)

    def cut_levels(self) -> tuple[float, ...] | None:
        """The fractions of each map's max its regions are cut at (``None``: Otsu's level of each map)."""
        raise NotImplementedError

    def device_stage(self, raw_maps: Tensor, size: tuple[int, int], frame: MapFrame | None = None) -> DeviceMaps:
        """Normalise and threshold on the device; packed masks to the CPU, the raw maps kept for the scores."""
        return self.device_stage_batch([raw_maps], [size], frame=frame)[0]

    def device_stage_batch(self, raw_maps: Sequence[Tensor], sizes: Sequence[tuple[int, int]],
                           budget: int | None = None, frame: MapFrame | None = None) -> list[DeviceMaps]:
        """:meth:`device_stage` of several images at once, within ``budget`` bytes, the maps laid on each image
        through ``frame`` (:func:`camloc.boxes.device.device_maps`)."""
        return device_maps(raw_maps, sizes, self.cut_levels(), budget, frame)

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """On the CPU: ``(mask index, xywh)`` of the packed masks."""
        raise NotImplementedError

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        """Scores from summed-area tables rebuilt on the device: the same boxes as :meth:`boxes`."""
        raise NotImplementedError

    def with_options(self, **options: Any) -> Recipe:
        """The same recipe with some parameters changed (``None`` values are ignored)."""
        given = known_options("recipe", type(self), options)
        return replace(self, **given) if given else self

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter names and their defaults."""
        return {f.name: f.default for f in fields(cls)}


def framed(frame: MapFrame | None) -> dict[str, MapFrame]:
    """``frame`` as the keyword :meth:`Recipe.boxes` takes, or nothing without one (a recipe written before maps had
    frames keeps working on unaligned maps)."""
    return {} if frame is None else {"frame": frame}


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
    return cls(**known_options("recipe", cls, options))


DEFAULT_RECIPE = "multilevel-flip"
