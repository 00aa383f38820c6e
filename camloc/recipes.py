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

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from camloc.boxes import (
    BoxSet,
    heatmaps_to_boxes,
    normalized_maps_to_boxes,
    parse_box_mode,
    parse_threshold,
    to_uint8,
    with_whole_image,
)
from camloc.cam import check_finite_maps, normalize_maps
from camloc.devicestage import DeviceMaps, device_maps
from camloc.devicestage import box_sums as device_box_sums
from camloc.devicestage import trace as trace_masks
from camloc.gridboxes import GridBoxes, grid_boxes
from camloc.options import known_options
from camloc.proposals import box_evidence, evidence, instance_cut, integral_images, level_boxes, per_class_nms

#: The ``box_scale`` option that traces boxes at the image's own resolution (stored as ``None``).
FULL_RESOLUTION = "full"
#: Largest ``box_scale``: 64 × a 14×14 grid is 896 pixels a side, beyond any photo's detail in a CAM.
MAX_BOX_SCALE = 64
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
        rows = self.image == index
        return BatchBoxes(self.image[rows], self.class_index[rows], self.xywh[rows], self.score[rows])


GATES = ("all", "topk", "prob", "calibrated")
#: The ``calibrated`` gate's threshold of every class for a model without calibrated thresholds.
CALIBRATION_FLOOR = 0.001


def class_indices(values: Sequence[int] | Tensor | np.ndarray, num_classes: int | None = None) -> list[int]:
    """Explicit class indices, checked once for every caller (``classes=`` of a recipe or a Localizer, of
    :meth:`~camloc.localize.Localizer.analyze` and of :meth:`~camloc.localize.Localizer.detections`):
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


@dataclass(frozen=True)
class Recipe:
    """Base of every recipe: ``classes`` (the gating option), ``flip`` and the two steps.

    ``flip`` refines the maps before any box is drawn: each class map (and probability) is the
    mean of the image's and of the mirrored image's, mirrored back (two forward passes). It
    centres maps that a strided network's sampling grid pushes off the object and averages out
    noise; the Localizer runs the views a recipe needs (:meth:`camloc.localize.Localizer.views`).
    """

    name: ClassVar[str] = ""
    classes: str | tuple[int, ...] = "all"
    flip: bool = False
    #: Maps averaged over six views (scales 0.75 / 1 / 1.25, each with its mirror) before any box is drawn.
    tta: bool = False
    #: The ``calibrated`` gate's per-class thresholds (the model's ``class_thresholds``; the Localizer
    #: sets them); ``None``: 0.001 for every class.
    thresholds: tuple[float, ...] | None = None

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

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        raise NotImplementedError

    def batch_boxes(self, raw_maps: Tensor, probs: Tensor, classes: Tensor, gate: Tensor,
                    sizes: Sequence[tuple[int, int]]) -> BatchBoxes:
        """Scored boxes of a whole batch: raw maps ``(B, k, h, w)`` of the class indices ``classes (k,)``,
        probabilities ``(B, K)`` of every class, ``gate (B, K)`` the classes to box (held ones only) and
        each image's ``(H, W)``. Here: :meth:`boxes` image by image; a recipe that can box the whole
        batch at once overrides it (the same boxes)."""
        held = gate[:, classes].cpu()
        parts = []
        for b, size in enumerate(sizes):
            rows = torch.nonzero(held[b]).flatten()
            if not len(rows):
                continue
            chosen = classes.cpu()[rows]
            found = self.boxes(raw_maps[b, rows.to(raw_maps.device)], probs[b, chosen.to(probs.device)], size)
            parts.append(BatchBoxes(np.full(len(found), b, np.int64), chosen.numpy()[found.class_index],
                                    found.xywh, found.score))
        return BatchBoxes.concatenate(parts)

    #: Whether :meth:`device_stage` / :meth:`trace` / :meth:`finish` exist: the per-pixel work on the maps'
    #: device, then only packed masks traced on the CPU (:mod:`camloc.devicestage`).
    on_device: ClassVar[bool] = False

    def device_boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        """:meth:`boxes` with the map stage on ``raw_maps``' device (the three steps in one process)."""
        maps = self.device_stage(raw_maps, size)
        return self.finish(maps, *self.trace(maps.packed, size[1]), probs)

    def cut_levels(self) -> tuple[float, ...] | None:
        """The fractions of each map's max its regions are cut at (``None``: Otsu's level of each map)."""
        raise NotImplementedError

    def device_stage(self, raw_maps: Tensor, size: tuple[int, int]) -> DeviceMaps:
        """Normalise and threshold on the device; packed masks to the CPU, summed-area tables kept."""
        return self.device_stage_batch([raw_maps], [size])[0]

    def device_stage_batch(self, raw_maps: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> list[DeviceMaps]:
        """:meth:`device_stage` of several images at once (:func:`camloc.devicestage.device_maps`)."""
        return device_maps(raw_maps, sizes, self.cut_levels())

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """On the CPU: ``(mask index, xywh)`` of the packed masks."""
        raise NotImplementedError

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        """Scores from the device's summed-area tables: the same boxes as :meth:`boxes`."""
        raise NotImplementedError

    def with_options(self, **options: Any) -> Recipe:
        """The same recipe with some parameters changed (``None`` values are ignored)."""
        given = known_options("recipe", type(self), options)
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
    return cls(**known_options("recipe", cls, options))


# ----------------------------------------------------------------------------------------------
# shared steps
# ----------------------------------------------------------------------------------------------

def boxes_from_raw_maps(raw_maps: Tensor, size: tuple[int, int], threshold: str | float = "otsu",
                        mode: str = "all", chunk: int = BOX_CHUNK) -> BoxSet:
    """Raw maps ``(k, h, w)`` → upsample/ReLU/normalise to ``size`` → :func:`heatmaps_to_boxes`,
    a few classes at a time; ``class_index`` refers to positions along ``raw_maps`` (``ValueError``
    for non-finite maps, or a threshold or mode that :func:`heatmaps_to_boxes` refuses)."""
    check_finite_maps(raw_maps)
    threshold, mode = parse_threshold(threshold), parse_box_mode(mode)
    parts = []
    for start in range(0, len(raw_maps), chunk):
        heat = normalize_maps(raw_maps[start:start + chunk], size).cpu().numpy()
        found = normalized_maps_to_boxes(heat, threshold, mode)
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
    on_device: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        parse_box_mode(self.mode)

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        if raw_maps.device.type != "cpu":
            return self.device_boxes(raw_maps, probs, size)
        found = boxes_from_raw_maps(raw_maps, size, self.threshold, self.mode)
        score = found.heat * probs.double().cpu().numpy()[found.class_index]
        return ScoredBoxes(found.class_index, found.xywh.astype(np.float64), score)

    def cut_levels(self) -> tuple[float, ...] | None:
        return threshold_levels(self.threshold)

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, self.mode)

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        heat = device_box_sums(maps.tables, owner, xywh) / (xywh[:, 2] * xywh[:, 3])
        return ScoredBoxes(owner, xywh.astype(np.float64), heat * probs.double().cpu().numpy()[owner])


@dataclass(frozen=True)
class EvidenceScored(Recipe):
    """Shared by the evidence-scored recipes: proposals of each map (:meth:`proposals`), then

    ``score = p(class) · √(share · soft IoU)`` (:func:`camloc.proposals.box_evidence`), then
    greedy per-class NMS at ``nms_iou``. A map with no proposal gets the whole image. Maps are
    normalised and traced :data:`BOX_CHUNK` classes at a time. Classes with ``p < 0.001`` get
    no boxes (their boxes would score below 0.001: the tail of every precision-recall curve);
    on 369 coco-mini train images that keeps every class present in the image, and it skips
    about 60 % of the 80 maps.
    """

    classes: str | tuple[int, ...] = "prob:0.001"
    nms_iou: float = 0.5
    box_scale: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou!r}")
        scale = self.box_scale
        if isinstance(scale, str) and scale == FULL_RESOLUTION:
            object.__setattr__(self, "box_scale", scale := None)
        if scale is not None and (isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer))
                                  or not 1 <= scale <= MAX_BOX_SCALE):
            raise ValueError(f"box_scale must be an integer from 1 to {MAX_BOX_SCALE} (boxes at that many times the "
                             f"feature grid) or {FULL_RESOLUTION!r} (at the image's resolution), got {scale!r}")

    #: Regions kept per map and level on the grid (``all`` | ``largest``).
    grid_mode: ClassVar[str] = "all"
    #: Whether the recipe can trace its boxes on the feature grid (``box_scale``) at all.
    traces_on_grid: ClassVar[bool] = True

    def grid(self, raw_maps: Tensor, probs: Tensor, sizes: Tensor, group: Tensor) -> GridBoxes:
        """:func:`camloc.gridboxes.grid_boxes` with this recipe's parameters."""
        mode = getattr(self, "mode", self.grid_mode)
        return grid_boxes(raw_maps, probs, sizes, group, int(self.box_scale), self.cut_levels(), mode,
                          float(self.nms_iou))

    def batch_boxes(self, raw_maps: Tensor, probs: Tensor, classes: Tensor, gate: Tensor,
                    sizes: Sequence[tuple[int, int]]) -> BatchBoxes:
        if self.box_scale is None:
            return super().batch_boxes(raw_maps, probs, classes, gate, sizes)
        device = raw_maps.device
        classes = classes.to(device)
        image, row = torch.nonzero(gate.to(device)[:, classes], as_tuple=True)
        found = self.grid(raw_maps[image, row], probs.to(device)[image, classes[row]],
                          torch.tensor(sizes, device=device)[image], image * len(classes) + row)
        return BatchBoxes(image[found.map_index].cpu().numpy(), classes[row[found.map_index]].cpu().numpy(),
                          found.xywh.cpu().numpy(), found.score.cpu().numpy())

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(map index (n,), xywh (n, 4))`` for normalised maps ``heat (k, H, W)`` (``u8`` = uint8(255·heat));
        ``grid`` is the raw maps' ``(h, w)``."""
        raise NotImplementedError

    def boxes(self, raw_maps: Tensor, probs: Tensor, size: tuple[int, int]) -> ScoredBoxes:
        if self.box_scale is not None:
            count, device = len(raw_maps), raw_maps.device
            found = self.grid(raw_maps, probs.to(device), torch.tensor([size], device=device).expand(count, 2),
                              torch.arange(count, device=device))
            return ScoredBoxes(found.map_index.cpu().numpy(), found.xywh.cpu().numpy(), found.score.cpu().numpy())
        if raw_maps.device.type != "cpu" and self.on_device:
            return self.device_boxes(raw_maps, probs, size)
        check_finite_maps(raw_maps)
        owners, rects, scores = [], [], []
        for start in range(0, len(raw_maps), BOX_CHUNK):
            heat = normalize_maps(raw_maps[start:start + BOX_CHUNK], size).cpu().numpy()
            owner, xywh = with_whole_image(*self.proposals(heat, to_uint8(heat), tuple(raw_maps.shape[-2:])),
                                           len(heat), size)
            owners.append(owner + start)
            rects.append(xywh)
            scores.append(box_evidence(integral_images(heat), owner, xywh))
        if not owners:
            return ScoredBoxes.empty()
        return self.keep_best(np.concatenate(owners), np.concatenate(rects), np.concatenate(scores), probs)

    def keep_best(self, owner: np.ndarray, xywh: np.ndarray, evidence_of_box: np.ndarray, probs: Tensor
                  ) -> ScoredBoxes:
        """``score = p · evidence``, per-class NMS, sorted by class then best first."""
        score = evidence_of_box * probs.double().cpu().numpy()[owner]
        kept = per_class_nms(owner, xywh, score, float(self.nms_iou))
        kept = kept[np.lexsort((-score[kept], owner[kept]))]  # by class, best first
        return ScoredBoxes(owner[kept], xywh[kept].astype(np.float64), score[kept])

    def finish(self, maps: DeviceMaps, owner: np.ndarray, xywh: np.ndarray, probs: Tensor) -> ScoredBoxes:
        owner, xywh = with_whole_image(owner // maps.per_map, xywh, len(maps.tables), maps.size)
        inside = device_box_sums(maps.tables, owner, xywh)
        totals = maps.tables[:, -1, -1].cpu().numpy()
        return self.keep_best(owner, xywh, evidence(inside, totals[owner], xywh), probs)


def threshold_levels(threshold: str | float) -> tuple[float, ...] | None:
    """A ``threshold`` option as cut levels: ``None`` for Otsu, else the one fraction."""
    return None if threshold == "otsu" else (float(threshold),)


@register("evidence")
@dataclass(frozen=True)
class Evidence(EvidenceScored):
    """The seed's boxes (Otsu or a fraction of the max, outer contours, all or the largest),
    scored by evidence: ``score = p · √(share · soft IoU)``, classes with ``p ≥ 0.001``, per-class NMS."""

    threshold: str | float = "otsu"
    mode: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        parse_box_mode(self.mode)

    on_device: ClassVar[bool] = True

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        found = heatmaps_to_boxes(heat, self.threshold, self.mode)
        return found.class_index, found.xywh

    def grid_levels(self) -> tuple[float, ...] | None:
        return None if self.threshold == "otsu" else (float(self.threshold),)

    def cut_levels(self) -> tuple[float, ...] | None:
        return threshold_levels(self.threshold)

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, self.mode)


@register("multilevel")
@dataclass(frozen=True)
class MultiLevel(EvidenceScored):
    """Proposals from several thresholds, kept by evidence.

    Every outer contour of ``m ≥ t`` for ``t`` in ``levels`` (a fraction of each map's maximum,
    0.1 … 0.9 by default: tight boxes around peaks and wide ones around whole objects), scored
    ``p · √(share · soft IoU)``; per-class NMS at IoU 0.5 keeps the best of overlapping
    proposals; classes with ``p ≥ 0.001``.
    """

    levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        levels = tuple(float(t) for t in np.atleast_1d(np.asarray(self.levels, dtype=np.float64)))
        if not levels or not all(0.0 < t <= 1.0 for t in levels):
            raise ValueError(f"levels must be fractions in (0, 1], got {self.levels!r}")
        object.__setattr__(self, "levels", levels)

    on_device: ClassVar[bool] = True

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        owner, _, xywh = level_boxes(u8, self.levels)
        return owner, xywh

    def cut_levels(self) -> tuple[float, ...] | None:
        return self.levels

    def trace(self, packed: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        return trace_masks(packed, width, levels=True)


@register("instances")
@dataclass(frozen=True)
class Instances(MultiLevel):
    """Multi-level proposals, split into instances.

    Local maxima of the map (≥ ``min_peak``, at least half a feature cell apart) seed a
    watershed of ``−m`` over ``m ≥ min(levels)``; every level's regions are cut along the
    borders between basins (:func:`camloc.proposals.instance_cut`), so a region holding two
    peaks — two people side by side — gives two boxes instead of one box around both, at every
    level (as Peak Response Maps). Scoring, NMS and gating as :class:`MultiLevel`.
    """

    min_peak: float = 0.3
    on_device: ClassVar[bool] = False  # its watershed needs the whole map on the CPU
    traces_on_grid: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.min_peak) <= 1.0:
            raise ValueError(f"min_peak must be in [0, 1], got {self.min_peak!r}")
        if self.box_scale is not None:
            raise ValueError("instances traces its watershed at the image's resolution: box_scale must be 'full'")

    def proposals(self, heat: np.ndarray, u8: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        cut = np.stack([instance_cut(m, min(self.levels), float(self.min_peak), grid) for m in heat])
        owner, _, xywh = level_boxes(u8 * cut, self.levels)
        return owner, xywh


@register("multilevel-flip")
@dataclass(frozen=True)
class MultiLevelFlip(MultiLevel):
    """:class:`MultiLevel` on maps refined with the mirrored image (``flip``, two forward passes).

    The default until the README's rule chose :class:`MultiLevelTTA` (two forward passes instead of
    six; ``bench/recipes.py``). Its boxes are traced at 2× the feature grid
    (``box_scale=2``, on the maps' device) and scaled to the image: AP and AP50 within the
    bootstrap intervals of tracing at the image's resolution on real and synthetic images, at
    1/4–1/12 of the box stage's time (``bench/box_resolution.py``; README). ``box_scale="full"``
    traces at the image's resolution.
    """

    flip: bool = True
    box_scale: int | None = 2


@register("multilevel-tta")
@dataclass(frozen=True)
class MultiLevelTTA(MultiLevel):
    """:class:`MultiLevel` on maps averaged over six views (``tta``: scales 0.75 / 1 / 1.25, each with its
    mirror; six forward passes).

    The default, chosen by the README's rule (fixed before the comparison): among all map methods ×
    recipes × gates within 10× the previous default's time, the only candidates whose AP and AP50
    ratios to ``seed`` have 95 % intervals above 1 on real and synthetic images are ``multilevel`` and
    this; this has the higher gain (``bench/recipes.py``; README).
    """

    tta: bool = True


DEFAULT_RECIPE = "multilevel-tta"
