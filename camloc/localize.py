"""``Localizer``: images in, COCO-results detections out — the one object the app, CLIs and users call.

``predict(image)`` = preprocess → one forward pass → maps of the requested classes → boxes →
scores. :meth:`Localizer.analyze` and :meth:`Localizer.detections` expose the two halves so that
an interactive caller runs the network once per image and re-derives boxes as settings change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from camloc.cam import DEFAULT_METHOD, MapMethod, class_activation_maps, make_method, normalize_maps
from camloc.evaluation import Detections
from camloc.images import ImageSource, load_image
from camloc.models import CamModel, load_model, probabilities
from camloc.preprocess import normalise, pixels_of, resize_square
from camloc.profiling import stage
from camloc.recipes import DEFAULT_RECIPE, BatchBoxes, Recipe, ScoredBoxes, class_indices, make_recipe

TTA_SCALES = (0.75, 1.0, 1.25)


@dataclass(frozen=True)
class Analysis:
    """One image after the forward pass: probabilities of every class and raw maps of some."""

    size: tuple[int, int]  # original (H, W)
    probs: Tensor  # (K,) every class's probability
    classes: Tensor  # (k,) the class indices whose maps are held
    raw_maps: Tensor  # (k, h, w) raw maps (no ReLU / normalisation)
    views: tuple[tuple[float, bool], ...] = ((1.0, False),)  # the (scale, flip) views averaged

    def heatmaps(self, classes: Sequence[int] | None = None) -> Tensor:
        """Normalised maps ``(k, H, W)`` in [0, 1] at the original size, for ``classes`` (default: all held)."""
        rows = self.rows(classes) if classes is not None else slice(None)
        return normalize_maps(self.raw_maps[rows], self.size)

    def rows(self, classes: Sequence[int]) -> list[int]:
        """Positions in ``raw_maps`` of the given class indices (a ``ValueError`` if one is not held)."""
        where = {int(k): i for i, k in enumerate(self.classes.tolist())}
        indices = class_indices(classes, len(self.probs))
        missing = [k for k in indices if k not in where]
        if missing:
            raise ValueError(f"no map computed for class indices {missing}")
        return [where[k] for k in indices]

    @staticmethod
    def average(views: Sequence[Analysis]) -> Analysis:
        """One image's analysis from its per-view analyses (``Localizer.analyze(image, views=[view])`` for
        each of ``Localizer.views()``, in that order): the same numbers as analysing all views at once."""
        maps, probs = average_views([(a.raw_maps[None], a.probs[None]) for a in views])
        return Analysis(views[0].size, probs[0], views[0].classes, maps[0], tuple(v for a in views for v in a.views))

    @property
    def mirrored(self) -> bool:
        """Whether a mirrored view is averaged in (what a ``flip`` recipe needs)."""
        return any(flip for _, flip in self.views)


@dataclass(frozen=True)
class BatchAnalysis:
    """A batch after the forward pass, on the model's device: what :class:`Analysis` holds for one image."""

    sizes: tuple[tuple[int, int], ...]  # original (H, W) of each image
    probs: Tensor  # (B, K)
    classes: Tensor  # (k,) the class indices whose maps are held
    raw_maps: Tensor  # (B, k, h, w)
    views: tuple[tuple[float, bool], ...] = ((1.0, False),)
    held: Tensor | None = None  # (B, k) bool: the classes each image's maps were computed for (None: all)

    @classmethod
    def from_slots(cls, sizes: tuple[tuple[int, int], ...], probs: Tensor, slots: Tensor, counts: Sequence[int],
                   slot_maps: Tensor, views: tuple[tuple[float, bool], ...]) -> BatchAnalysis:
        """Maps of per-image class slots (``slots (B, s)``, the first ``counts[b]`` valid) held as the union of
        the batch's classes: other images' classes are zero maps, marked not ``held``."""
        count = torch.as_tensor(counts, device=slots.device)
        valid = torch.arange(slots.shape[1], device=slots.device) < count[:, None]
        union = torch.unique(slots[valid])
        image, slot = torch.nonzero(valid, as_tuple=True)
        column = torch.searchsorted(union, slots[image, slot])
        maps = slot_maps.new_zeros(len(sizes), len(union), *slot_maps.shape[-2:])
        maps[image, column] = slot_maps[image, slot]
        held = torch.zeros(len(sizes), len(union), dtype=torch.bool, device=slots.device)
        held[image, column] = True
        return cls(sizes, probs, union, maps, views, held)

    def __len__(self) -> int:
        return len(self.sizes)

    def gate(self, recipe: Recipe, supported: Tensor) -> Tensor:
        """Boolean ``(B, K)``: the classes ``recipe`` gives boxes per image, among the ``supported`` ones whose
        maps that image holds."""
        gate = recipe.select(self.probs, supported.to(self.probs.device))
        if self.held is not None:
            held = torch.zeros_like(gate)
            held[:, self.classes] = self.held
            gate &= held
        return gate

    def image(self, index: int) -> Analysis:
        """The analysis of one image of the batch (views of the batch's tensors, no copy)."""
        if self.held is None:
            return Analysis(self.sizes[index], self.probs[index], self.classes, self.raw_maps[index], self.views)
        rows = torch.nonzero(self.held[index]).flatten()
        return Analysis(self.sizes[index], self.probs[index], self.classes[rows], self.raw_maps[index, rows],
                        self.views)

    def images(self) -> list[Analysis]:
        return [self.image(b) for b in range(len(self))]


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype (``None``: float32): ``auto`` is bf16 on a CUDA GPU that has it
    (else fp16 there) and float32 elsewhere; ``fp32``, ``bf16`` and ``fp16`` force one."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISIONS[precision]


class Localizer:
    """Weakly-supervised localisation with class activation maps.

    Options: ``method`` a map method's name (see :data:`camloc.cam.METHODS`; default
    :data:`~camloc.cam.DEFAULT_METHOD`) or a method object; ``recipe`` the box recipe's name (see
    :mod:`camloc.recipes`; default :data:`~camloc.recipes.DEFAULT_RECIPE`) or a recipe object;
    ``threshold``, ``boxes`` (all | largest) and ``classes`` (all | topk:N | prob:P | calibrated | index list)
    and any other ``recipe_options`` are parameters of the recipe (``None``: the recipe's
    default); ``img_size`` (default: the checkpoint's ``input_size``); ``tta`` averages maps and
    probabilities over scales 0.75/1/1.25 and horizontal flips; ``gradcam_layer`` a module name for
    a method with a ``layer`` option (default: the feature layer); ``precision`` the backbone's
    arithmetic for CAM, the default method (see :func:`resolve_precision`; its maps, probabilities and
    boxes are always computed in float32; the other methods run in float32 throughout).
    """

    def __init__(self, model: CamModel, meta: dict[str, Any], method: str | MapMethod = DEFAULT_METHOD,
                 recipe: str | Recipe = DEFAULT_RECIPE, threshold: str | float | None = None, boxes: str | None = None,
                 classes: str | Sequence[int] | None = None, img_size: int | None = None, tta: bool = False,
                 device: str | torch.device | None = None, gradcam_layer: str | None = None,
                 precision: str = "auto", **recipe_options: Any):
        self.map_method = make_method(method, **({"layer": gradcam_layer} if gradcam_layer else {}))
        self.map_method.check(model)
        self.thresholds = tuple(meta["class_thresholds"]) if meta.get("class_thresholds") else None
        self.recipe = make_recipe(recipe, **recipe_box_options(threshold, boxes), classes=classes,
                                  thresholds=self.thresholds, **recipe_options)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.meta = meta
        self.method = self.map_method.name
        self.img_size = int(img_size or meta["input_size"])
        self.tta = tta
        self.class_names: list[str] = list(meta["class_names"])
        self.category_ids: list[int] = list(meta.get("category_ids", range(meta["num_classes"])))
        unsupported = set(meta.get("unsupported_classes", ()))
        self.supported = torch.tensor([n not in unsupported for n in self.class_names], device=self.device)
        self._mean = torch.tensor(meta["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(meta["std"], device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Localizer:
        """Load a checkpoint (see :func:`camloc.models.load_model`) and wrap it."""
        model, meta = load_model(path)
        return cls(model, meta, **options)

    # ------------------------------------------------------------------ preprocessing
    def pixels(self, images: Sequence[ImageSource]) -> list[Tensor]:
        """Any image sources (:func:`camloc.images.load_image`: EXIF-upright RGB) → ``uint8 (3, H, W)`` each;
        ``uint8 (3, H, W)`` tensors (already decoded, on any device) pass through."""
        return [im if isinstance(im, Tensor) else pixels_of(load_image(im)) for im in images]

    def to_tensor(self, images: Sequence[Image.Image | Tensor], size: int | None = None) -> Tensor:
        """RGB PIL images or ``uint8 (3, H, W)`` pixels → normalised batch ``(B, 3, S, S)`` on the device
        (bilinear, antialiased; resized on the device)."""
        pixels = [im if isinstance(im, Tensor) else pixels_of(im) for im in images]
        return normalise(resize_square(pixels, size or self.img_size, self.device), self._mean, self._std)

    # ------------------------------------------------------------------ forward + maps
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                              enabled=self.precision is not None)

    def _maps(self, x: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Raw maps ``(B, k, h, w)`` of ``classes`` (None: all; ``(k,)`` shared or ``(B, k)`` per image) and
        logits ``(B, K)`` for a batch, both float32, by the Localizer's map method. CAM runs its backbone under
        ``precision`` (bf16/fp16 autocast) and computes maps and logits in float32 from its features; the
        other methods run in float32."""
        if self.method == "cam":
            with torch.inference_mode():
                with stage("forward"), self._autocast():
                    logits, features = self.model(x)
                with stage("maps"):
                    if self.precision is not None:
                        features = features.float()
                        logits = self.model.head_logits(features)
                    maps = class_activation_maps(*self.model.cam_terms(features)[:2], classes)
            return maps, logits
        with stage(f"forward + maps ({self.method})"):
            return self.map_method.maps(self.model, x, classes)

    def views(self, recipe: str | Recipe | None = None) -> list[tuple[float, bool]]:
        """The ``(scale, flip)`` views whose maps and probabilities are averaged: six with TTA (the Localizer's
        ``tta`` or a ``tta`` recipe), the image and its mirror for a ``flip`` recipe (default: the Localizer's),
        else the image alone."""
        if self.tta or self.recipe_for(recipe).tta:
            return [(s, f) for s in TTA_SCALES for f in (False, True)]
        return [(1.0, False), (1.0, True)] if self.recipe_for(recipe).flip else [(1.0, False)]

    def view_size(self, scale: float) -> int:
        """The network input side of a view at ``scale``."""
        return max(32, round(self.img_size * scale))

    def _forward_views(self, pixels: Sequence[Tensor], classes: Tensor | None,
                       views: Sequence[tuple[float, bool]], maps: bool = True) -> tuple[Tensor | None, Tensor]:
        """Raw maps and probabilities averaged over ``views`` (maps: ``None`` when ``maps`` is False).

        Each scale is resized once; its mirrored view is ``x.flip(-1)`` of the same tensor (maps flipped
        back). Each view is its own forward pass of the batch, so a view's numbers are the same whether it
        is computed alone or with the others; views are averaged in the order given, at the first's grid."""
        resized: dict[float, Tensor] = {}
        ordered = []
        for scale, flip in views:
            with stage("preprocess"):
                if scale not in resized:
                    resized[scale] = self.to_tensor(pixels, self.view_size(scale))
                x = resized[scale].flip(-1) if flip else resized[scale]
            if maps:
                raw, logits = self._maps(x, classes)
                raw = raw.flip(-1) if flip else raw
            else:
                with stage("forward"), torch.inference_mode(), self._autocast():
                    raw, logits = None, self.model(x)[0].float()
            ordered.append((raw, probabilities(logits, self.meta["activation"])))
        if not maps:
            return None, sum_in_order([p for _, p in ordered]) / len(ordered)
        return average_views(ordered)

    def analyze(self, images: Sequence[ImageSource] | ImageSource,
                classes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                views: Sequence[tuple[float, bool]] | None = None) -> list[Analysis]:
        """One forward pass (per TTA view) over a batch; maps of ``classes`` (default: all classes; a list of
        class lists: each image's own).

        A ``per_class`` method (the gradient methods: one batched backward pass per class) computes,
        without ``classes``, the maps of the classes the recipe gates in for each image, from the
        probabilities of a first forward pass; each image has its own classes (one backward pass per
        class *slot*: as many as the image with the most gated classes). ``views``: compute only these
        of :meth:`views` (an interactive caller caches each view and joins them with
        :meth:`Analysis.average`, which gives exactly the TTA analysis).
        """
        batch = images if isinstance(images, (list, tuple)) else [images]
        classes = self.checked_classes(classes, len(batch))  # refused before any image is decoded
        return self.analyze_batch(self.pixels(batch), classes, views).images()

    def checked_classes(self, classes: Any, count: int) -> list[int] | list[list[int]] | None:
        """``classes`` of :meth:`analyze` checked once (:func:`~camloc.recipes.class_indices`): ``None``, one list
        of class indices for every image, or one list per image for ``count`` images (a ``ValueError``
        otherwise)."""
        if per_image_classes(classes):
            if len(classes) != count:
                raise ValueError(f"{count} images but class lists for {len(classes)}")
            return [class_indices(own, len(self.class_names)) for own in classes]
        return None if classes is None else class_indices(classes, len(self.class_names))

    def analyze_batch(self, pixels: Sequence[Tensor], classes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                      views: Sequence[tuple[float, bool]] | None = None) -> BatchAnalysis:
        """:meth:`analyze` of decoded ``uint8 (3, H, W)`` images (on any device), kept as one batch.

        Maps of per-image classes (given, or gated for a ``per_class`` method) are computed in per-image class
        slots (as many backward passes as the image with the most classes) and held as the union of the
        batch's classes with a per-image ``held`` mask."""
        views = tuple(views or self.views())
        num_classes = len(self.class_names)
        classes = self.checked_classes(classes, len(pixels))
        sizes = tuple((int(p.shape[-2]), int(p.shape[-1])) for p in pixels)
        gate = None
        if per_image_classes(classes):
            gate = torch.zeros(len(pixels), num_classes, dtype=torch.bool, device=self.device)
            for b, own in enumerate(classes):
                gate[b, own] = True
        elif classes is None and self.map_method.per_class:
            _, probs = self._forward_views(pixels, None, views, maps=False)
            gate = self.select(probs)
        if gate is None:
            wanted = None if classes is None else torch.as_tensor(classes, dtype=torch.long, device=self.device)
            maps, probs = self._forward_views(pixels, wanted, views)
            held = torch.arange(num_classes, device=self.device) if wanted is None else wanted
            return BatchAnalysis(sizes, probs, held, maps, views)
        slots, counts = gated_slots(gate)
        slot_maps, probs = self._forward_views(pixels, slots, views)
        return BatchAnalysis.from_slots(sizes, probs, slots, counts, slot_maps, views)

    def select(self, probs: Tensor) -> Tensor:
        """Boolean ``(B, K)``: the classes the recipe gives boxes per image (supported ones only)."""
        return self.recipe.select(probs, self.supported)

    # ------------------------------------------------------------------ boxes + detections
    def recipe_for(self, recipe: str | Recipe | None = None, threshold: str | float | None = None,
                   mode: str | None = None, **options: Any) -> Recipe:
        """The Localizer's recipe, or another one by name, with some options changed."""
        base = self.recipe if recipe is None else recipe
        if isinstance(base, str) and base == self.recipe.name:
            base = self.recipe
        return make_recipe(base, **recipe_box_options(threshold, mode), thresholds=self.thresholds, **options)

    def boxes(self, analysis: Analysis, classes: Sequence[int], recipe: Recipe | None = None) -> ScoredBoxes:
        """Scored boxes of ``classes`` (indices held by ``analysis``); ``class_index`` refers to
        positions in ``classes``."""
        return recipe_boxes(analysis, classes, recipe or self.recipe)

    def detections(self, analysis: Analysis, image_id: int | None = None, classes: Sequence[int] | None = None,
                   threshold: str | float | None = None, mode: str | None = None, recipe: str | Recipe | None = None,
                   **options: Any) -> list[dict[str, Any]]:
        """COCO-results dicts for one analysed image: ``bbox`` [x, y, w, h] in original pixels, scored
        by the recipe. ``classes`` (class indices) bypasses the recipe's class gating; ``recipe``,
        ``threshold``, ``mode`` and ``options`` override the Localizer's recipe for this call."""
        chosen = self.recipe_for(recipe, threshold, mode, **options)
        return recipe_detections(analysis, chosen, self.supported, self.category_ids, image_id, classes)

    def baseline_detections(self, analysis: Analysis, kind: str, image_id: int | None = None) -> list[dict[str, Any]]:
        """Boxes that ignore the maps (see :func:`baseline_detections`), for the recipe's classes."""
        return baseline_detections(analysis, kind, self.recipe, self.supported, self.category_ids, image_id)

    def detect(self, images: Sequence[ImageSource], image_ids: Sequence[int] | None = None) -> Detections:
        """Detections of a batch as flat arrays (:class:`~camloc.evaluation.Detections`): one forward pass per
        view for the whole batch, then the recipe's box stage for the whole batch (on the device for the
        grid recipes). ``image_ids`` default to the images' positions."""
        ids = list(range(len(images))) if image_ids is None else list(image_ids)
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        batch = self.analyze_batch(self.pixels(images))
        boxes = self.recipe.batch_boxes(batch.raw_maps, batch.probs, batch.classes, batch.gate(self.recipe,
                                                                                               self.supported),
                                        batch.sizes)
        return batch_detections(boxes, ids, self.category_ids)

    def predict_batch(self, images: Sequence[ImageSource], image_ids: Sequence[int] | None = None) -> list[list[dict]]:
        """Detections for each image of a batch as COCO-results dicts (see :meth:`detect`); ``image_id`` only
        when ``image_ids`` are given."""
        if image_ids is not None and len(image_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(image_ids)} image ids")
        per_image: list[list[dict]] = [[] for _ in images]
        for detection in self.detect(images).to_dicts():
            position = detection.pop("image_id")
            head = {} if image_ids is None else {"image_id": image_ids[position]}
            per_image[position].append({**head, **detection})
        return per_image

    def predict(self, image: ImageSource, image_id: int | None = None) -> list[dict[str, Any]]:
        """Detections of one image (path, bytes, PIL image or array) as COCO-results dicts."""
        return self.predict_batch([image], None if image_id is None else [image_id])[0]


def batch_detections(boxes: BatchBoxes, image_ids: Sequence[int], category_ids: Sequence[int]) -> Detections:
    """A batch's boxes as detections: ``image_id`` from each box's position in the batch, ``category_id`` from its
    class index."""
    return Detections.from_arrays(np.asarray(image_ids, np.int64)[boxes.image],
                                  np.asarray(category_ids, np.int64)[boxes.class_index], boxes.xywh, boxes.score)


def sum_in_order(tensors: Sequence[Tensor]) -> Tensor:
    """``((t0 + t1) + t2) + …``: a fixed order of float additions, so a view's numbers never depend on
    how the views were batched."""
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def per_image_classes(classes: Any) -> bool:
    """Whether a ``classes`` argument lists each image's own classes (a list of lists, or a ``(B, k)`` tensor)."""
    if classes is None:
        return False
    if isinstance(classes, (Tensor, np.ndarray)):
        return classes.ndim == 2
    if isinstance(classes, str) or not len(classes):
        return False
    first = classes[0]
    return (isinstance(first, (Tensor, np.ndarray)) and first.ndim > 0) or (
        isinstance(first, Sequence) and not isinstance(first, str))


def gated_slots(gate: Tensor) -> tuple[Tensor, list[int]]:
    """Boolean ``(B, K)`` gates → ``(B, k)`` class indices per image (its gated classes in index order,
    padded with its first one, or class 0) and each image's count, ``k`` the largest count."""
    counts = gate.sum(1)
    width = int(counts.max()) if len(gate) else 0
    order = torch.argsort((~gate).to(torch.int8), dim=1, stable=True)[:, :width]
    padded = torch.where(torch.arange(width, device=gate.device) < counts[:, None], order, order[:, :1])
    return padded, counts.tolist()


def average_views(views: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Mean of per-view ``(raw maps (B, k, h, w), probabilities (B, K))``, maps resized to the first view's grid."""
    grid = views[0][0].shape[-2:]
    maps = [m if m.shape[-2:] == grid else m.new_zeros(*m.shape[:2], *grid) if not m.numel() else
            F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m, _ in views]
    return sum_in_order(maps) / len(views), sum_in_order([p for _, p in views]) / len(views)


def recipe_boxes(analysis: Analysis, classes: Sequence[int], recipe: Recipe) -> ScoredBoxes:
    """``recipe``'s scored boxes of ``classes`` (indices held by ``analysis``)."""
    if recipe.flip and not analysis.mirrored:
        raise ValueError(f"recipe {recipe.name!r} refines the maps with the mirrored image, which this analysis "
                         "lacks; analyse with views=localizer.views(recipe)")
    if recipe.tta and len(set(analysis.views)) < len(TTA_SCALES) * 2:
        raise ValueError(f"recipe {recipe.name!r} averages the maps of six views (TTA), which this analysis lacks; "
                         "analyse with views=localizer.views(recipe)")
    rows = analysis.rows(classes)
    return recipe.boxes(analysis.raw_maps[rows], analysis.probs[list(classes)], analysis.size)


def selected_classes(analysis: Analysis, recipe: Recipe, supported: Tensor) -> list[int]:
    """The class indices the recipe gates in for this image (among the supported ones)."""
    gate = recipe.select(analysis.probs.unsqueeze(0), supported.to(analysis.probs.device))[0]
    return torch.nonzero(gate).flatten().tolist()


def recipe_detections(analysis: Analysis, recipe: Recipe, supported: Tensor, category_ids: Sequence[int],
                      image_id: int | None = None, classes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO-results dicts of one analysed image: the recipe's boxes of ``classes`` (default: the
    classes it gates in and whose maps are held), ``category_id`` from the class index."""
    if classes is None:
        held = set(analysis.classes.tolist())
        classes = [k for k in selected_classes(analysis, recipe, supported) if k in held]
    if not classes:
        return []
    return boxes_to_detections(recipe_boxes(analysis, classes, recipe), classes, category_ids, image_id)


def boxes_to_detections(found: ScoredBoxes, classes: Sequence[int], category_ids: Sequence[int],
                        image_id: int | None = None) -> list[dict[str, Any]]:
    """COCO-results dicts of scored boxes whose ``class_index`` are positions in ``classes``."""
    class_of_box = np.asarray(classes, dtype=np.int64)[found.class_index]
    head = {} if image_id is None else {"image_id": image_id}
    return [{**head, "category_id": category_ids[k], "bbox": [float(v) for v in box], "score": float(s)}
            for k, box, s in zip(class_of_box.tolist(), found.xywh.tolist(), found.score.tolist())]


def baseline_detections(analysis: Analysis, kind: str, recipe: Recipe, supported: Tensor,
                        category_ids: Sequence[int], image_id: int | None = None) -> list[dict[str, Any]]:
    """Boxes that ignore the maps, for comparison: ``"full"`` (the whole image) or ``"center"`` (the
    central half in each dimension), one per class the recipe gates in, scored by its probability."""
    height, width = analysis.size
    boxes = {"full": [0.0, 0.0, float(width), float(height)], "center": [width / 4, height / 4, width / 2, height / 2]}
    if kind not in boxes:
        raise ValueError(f"baseline must be one of {sorted(boxes)}, got {kind!r}")
    head = {} if image_id is None else {"image_id": image_id}
    return [{**head, "category_id": category_ids[k], "bbox": list(boxes[kind]), "score": float(analysis.probs[k])}
            for k in selected_classes(analysis, recipe, supported)]


def recipe_box_options(threshold: str | float | None, boxes: str | None) -> dict[str, Any]:
    """The Localizer's historical ``threshold``/``boxes`` arguments as recipe options."""
    return {"threshold": threshold, "mode": boxes}
