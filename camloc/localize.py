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
from torchvision.transforms.v2 import functional as TF

from camloc.cam import DEFAULT_METHOD, MapMethod, make_method, normalize_maps
from camloc.images import ImageSource, load_image
from camloc.models import CamModel, load_model, probabilities
from camloc.recipes import DEFAULT_RECIPE, Recipe, ScoredBoxes, make_recipe

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
        missing = [int(k) for k in classes if int(k) not in where]
        if missing:
            raise ValueError(f"no map computed for class indices {missing}")
        return [where[int(k)] for k in classes]

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


class Localizer:
    """Weakly-supervised localisation with class activation maps.

    Options: ``method`` a map method's name (see :data:`camloc.cam.METHODS`; default
    :data:`~camloc.cam.DEFAULT_METHOD`) or a method object; ``recipe`` the box recipe's name (see
    :mod:`camloc.recipes`; default :data:`~camloc.recipes.DEFAULT_RECIPE`) or a recipe object;
    ``threshold``, ``boxes`` (all | largest) and ``classes`` (all | topk:N | prob:P | calibrated | index list)
    and any other ``recipe_options`` are parameters of the recipe (``None``: the recipe's
    default); ``img_size`` (default: the checkpoint's ``input_size``); ``tta`` averages maps and
    probabilities over scales 0.75/1/1.25 and horizontal flips; ``gradcam_layer`` a module name for
    a method with a ``layer`` option (default: the feature layer).
    """

    def __init__(self, model: CamModel, meta: dict[str, Any], method: str | MapMethod = DEFAULT_METHOD,
                 recipe: str | Recipe = DEFAULT_RECIPE, threshold: str | float | None = None, boxes: str | None = None,
                 classes: str | Sequence[int] | None = None, img_size: int | None = None, tta: bool = False,
                 device: str | torch.device | None = None, gradcam_layer: str | None = None, **recipe_options: Any):
        self.map_method = make_method(method, **({"layer": gradcam_layer} if gradcam_layer else {}))
        self.map_method.check(model)
        self.thresholds = tuple(meta["class_thresholds"]) if meta.get("class_thresholds") else None
        self.recipe = make_recipe(recipe, **recipe_box_options(threshold, boxes), classes=classes,
                                  thresholds=self.thresholds, **recipe_options)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
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
    def to_tensor(self, images: Sequence[Image.Image], size: int | None = None) -> Tensor:
        """RGB PIL images → normalised batch ``(B, 3, S, S)`` on the device (bilinear, antialiased)."""
        size = size or self.img_size
        batch = [TF.resize(TF.pil_to_tensor(im), [size, size], antialias=True) for im in images]
        x = torch.stack(batch).to(self.device, non_blocking=True).float().div_(255)
        return (x - self._mean) / self._std

    # ------------------------------------------------------------------ forward + maps
    def _maps(self, x: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Raw maps ``(B, k, h, w)`` of ``classes`` (None: all; ``(k,)`` or ``(B, k)`` per image) and logits
        ``(B, K)`` for a batch, by the Localizer's map method."""
        return self.map_method.maps(self.model, x, classes)

    def views(self, recipe: str | Recipe | None = None) -> list[tuple[float, bool]]:
        """The ``(scale, flip)`` views whose maps and probabilities are averaged: six with TTA, the image
        and its mirror for a ``flip`` recipe (default: the Localizer's), else the image alone."""
        if self.tta:
            return [(s, f) for s in TTA_SCALES for f in (False, True)]
        return [(1.0, False), (1.0, True)] if self.recipe_for(recipe).flip else [(1.0, False)]

    def _view(self, images: Sequence[Image.Image], classes: Tensor | None, scale: float,
              flip: bool) -> tuple[Tensor, Tensor]:
        """Raw maps (flipped back, at this view's grid) and probabilities of one view."""
        x = self.to_tensor(images, max(32, round(self.img_size * scale)))
        if flip:
            x = x.flip(-1)
        maps, logits = self._maps(x, classes)
        if flip:
            maps = maps.flip(-1)
        return maps, probabilities(logits, self.meta["activation"])

    def _maps_tta(self, images: Sequence[Image.Image], classes: Tensor | None,
                  views: Sequence[tuple[float, bool]] | None = None) -> tuple[Tensor, Tensor]:
        """Raw maps and probabilities averaged over ``views`` (default: :meth:`views`)."""
        return average_views([self._view(images, classes, s, f) for s, f in (views or self.views())])

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
        pil = [load_image(im) for im in batch]
        views = tuple(views or self.views())
        wanted, counts = None, None
        per_image = classes is not None and (classes.ndim == 2 if isinstance(classes, Tensor) else
                                             len(classes) > 0 and not isinstance(classes[0], (int, np.integer)))
        if per_image:
            if len(classes) != len(pil):
                raise ValueError(f"{len(pil)} images but class lists for {len(classes)}")
            gate = torch.zeros(len(pil), len(self.class_names), dtype=torch.bool, device=self.device)
            for b, own in enumerate(classes):
                gate[b, list(own)] = True
            wanted, counts = gated_slots(gate)
        elif classes is not None:
            wanted = torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        elif self.map_method.per_class:
            wanted, counts = gated_slots(self.select(self._probabilities(pil, views)))
        maps, probs = self._maps_tta(pil, wanted, views)
        held = wanted if wanted is not None else torch.arange(len(self.class_names), device=self.device)
        if counts is None:
            return [Analysis((im.height, im.width), probs[b], held, maps[b], views) for b, im in enumerate(pil)]
        return [Analysis((im.height, im.width), probs[b], held[b, :n], maps[b, :n], views)
                for b, (im, n) in enumerate(zip(pil, counts))]

    def _probabilities(self, images: Sequence[Image.Image], views: Sequence[tuple[float, bool]]) -> Tensor:
        """Class probabilities averaged over ``views`` (the same numbers as the analysis), no maps."""
        total = None
        with torch.inference_mode():
            for scale, flip in views:
                x = self.to_tensor(images, max(32, round(self.img_size * scale)))
                probs = probabilities(self.model(x.flip(-1) if flip else x)[0], self.meta["activation"])
                total = probs if total is None else total + probs
        return total / len(views)

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

    def predict_batch(self, images: Sequence[ImageSource], image_ids: Sequence[int] | None = None) -> list[list[dict]]:
        """Detections for each image of a batch (one forward pass for the whole batch)."""
        ids = list(image_ids) if image_ids is not None else [None] * len(images)
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        return [self.detections(a, i) for a, i in zip(self.analyze(list(images)), ids)]

    def predict(self, image: ImageSource, image_id: int | None = None) -> list[dict[str, Any]]:
        """Detections of one image (path, bytes, PIL image or array) as COCO-results dicts."""
        return self.predict_batch([image], None if image_id is None else [image_id])[0]


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
    total_maps, total_probs = None, None
    for maps, probs in views:
        if maps.shape[-2:] != grid:
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        total_maps = maps if total_maps is None else total_maps + maps
        total_probs = probs if total_probs is None else total_probs + probs
    return total_maps / len(views), total_probs / len(views)


def recipe_boxes(analysis: Analysis, classes: Sequence[int], recipe: Recipe) -> ScoredBoxes:
    """``recipe``'s scored boxes of ``classes`` (indices held by ``analysis``)."""
    if recipe.flip and not analysis.mirrored:
        raise ValueError(f"recipe {recipe.name!r} refines the maps with the mirrored image, which this analysis "
                         "lacks; analyse with views=localizer.views(recipe)")
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
