"""``Localizer``: images in, COCO-results detections out — the one object the app, CLIs and users call.

``predict(image)`` = preprocess → one forward pass → maps of the requested classes → boxes →
scores. :meth:`Localizer.analyze` and :meth:`Localizer.detections` expose the two halves so that
an interactive caller runs the network once per image and re-derives boxes as settings change.
"""


from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camloc.boxes import DEFAULT_RECIPE, Recipe, ScoredBoxes, class_indices, make_recipe
from camloc.cam import DEFAULT_METHOD, MapMethod, class_activation_maps, make_method
from camloc.cam.frame import MapFrame
from camloc.evaluation import Detections
from camloc.io.images import ImageSource
from camloc.io.preprocess import check_pixels, normalise, pixels_of, resize_square
from camloc.models import MAX_INPUT_SIZE, MIN_INPUT_SIZE, CamModel, load_model, probabilities
from camloc.models.geometry import known_geometry, model_geometry
from camloc.pipeline.analysis import (
    TTA_SCALES,
    Analysis,
    BatchAnalysis,
    average_views,
    gated_slots,
    per_image_classes,
    resolve_alignment,
    sum_in_order,
    view_size,
)
from camloc.pipeline.detections import (
    MAX_DETECTIONS,
    baseline_detections,
    batch_detections,
    recipe_box_options,
    recipe_boxes,
    recipe_detections,
)
from camloc.pipeline.predictor import Predictor, as_batch
from camloc.runtime.memory import Halving, parse_memory
from camloc.runtime.profiling import stage

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



def checked_img_size(img_size: Any, default: int) -> int:
    """The network input size: ``None`` → ``default`` (the checkpoint's); else an integer (not a bool, float or
    string) from :data:`~camloc.models.MIN_INPUT_SIZE` to :data:`~camloc.models.MAX_INPUT_SIZE`, as the CLIs'
    ``--img-size`` (a ``TypeError`` or ``ValueError`` otherwise)."""
    if img_size is None:
        return int(default)
    expected = (f"img_size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} (None: the checkpoint's "
                f"{default})")
    if isinstance(img_size, (bool, np.bool_)) or not isinstance(img_size, numbers.Integral):
        raise TypeError(f"{expected}, got {img_size!r}")
    if not MIN_INPUT_SIZE <= img_size <= MAX_INPUT_SIZE:
        raise ValueError(f"{expected}, got {img_size!r}")
    return int(img_size)


class Localizer(Predictor):
    """Weakly-supervised localisation with class activation maps.

    Options: ``method`` a map method's name (see :data:`camloc.cam.METHODS`; default
    :data:`~camloc.cam.DEFAULT_METHOD`) or a method object; ``recipe`` the box recipe's name (see
    :mod:`camloc.boxes`; default :data:`~camloc.boxes.DEFAULT_RECIPE`) or a recipe object;
    ``threshold``, ``boxes`` (all | largest) and ``classes`` (all | topk:N | prob:P | calibrated | index list)
    and any other ``recipe_options`` are parameters of the recipe (``None``: the recipe's
    default); ``img_size`` (default: the checkpoint's ``input_size``); ``tta`` averages maps and
    probabilities over scales 0.75/1/1.25 and horizontal flips; ``gradcam_layer`` a module name for
    a method with a ``layer`` option (default: the feature layer); ``precision`` the backbone's
    arithmetic for CAM, the default method (see :func:`resolve_precision`; its maps, probabilities and
    boxes are always computed in float32; the other methods run in float32 throughout); ``max_dets`` the
    detections :meth:`detect` keeps per image, the best scored, none scored 0 (default 100, COCO's convention; 0:
    every box the recipe gives, zero scores included, in :meth:`detect` and :meth:`detections` alike);
    ``max_memory`` the bytes the box stage may hold at once (``"2GiB"``, or a number; default:
    :func:`~camloc.runtime.memory.memory_budget`). A batch that runs out of device memory in :meth:`detect` is run
    again in halves (and later batches at that size). ``align``: how maps are laid on the image
    (:data:`~camloc.pipeline.analysis.ALIGNMENTS`; default: the recipe's ``default_align``, ``none`` for ``seed``):
    with ``measured`` each view's cells are placed where the model's geometry
    (:func:`camloc.models.geometry.model_geometry`) says they look, before views are averaged and boxes drawn.
    """

    def __init__(self, model: CamModel, meta: dict[str, Any], method: str | MapMethod = DEFAULT_METHOD,
                 recipe: str | Recipe = DEFAULT_RECIPE, threshold: str | float | None = None, boxes: str | None = None,
                 classes: str | Sequence[int] | None = None, img_size: int | None = None, tta: bool = False,
                 device: str | torch.device | None = None, gradcam_layer: str | None = None,
                 precision: str = "auto", max_dets: int = MAX_DETECTIONS, max_memory: int | str | None = None,
                 align: str | None = None, **recipe_options: Any):
        self.map_method = make_method(method, **({"layer": gradcam_layer} if gradcam_layer else {}))
        self.map_method.check(model)
        self.thresholds = tuple(meta["class_thresholds"]) if meta.get("class_thresholds") else None
        self.recipe = make_recipe(recipe, **recipe_box_options(threshold, boxes), classes=classes,
                                  thresholds=self.thresholds, **recipe_options)
        self.align = resolve_alignment(align, self.recipe)
        if self.align != "none" and "align" in self.map_method.parameters():  # fused layers: each its own geometry
            self.map_method = self.map_method.with_options(align=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.meta = meta
        self.method = self.map_method.name
        self.img_size = checked_img_size(img_size, meta["input_size"])
        self.tta = tta
        self.class_names: list[str] = list(meta["class_names"])
        if isinstance(self.recipe.classes, tuple):  # explicit class indices: checked now, not at the first image
            class_indices(self.recipe.classes, len(self.class_names))
        self.category_ids: list[int] = list(meta.get("category_ids", range(meta["num_classes"])))
        unsupported = set(meta.get("unsupported_classes", ()))
        self.supported = torch.tensor([n not in unsupported for n in self.class_names], device=self.device)
        self._mean = torch.tensor(meta["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(meta["std"], device=self.device).view(1, 3, 1, 1)
        if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 0:
            raise ValueError(f"max_dets must be a whole number ≥ 0 (0: every detection), got {max_dets!r}")
        self.max_dets = max_dets
        self.max_memory = None if max_memory is None else parse_memory(max_memory)
        self._halving = Halving(sys.maxsize, self.device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Localizer:
        """Load a checkpoint (see :func:`camloc.models.load_model`) and wrap it."""
        model, meta = load_model(path)
        return cls(model, meta, **options)

    # ------------------------------------------------------------------ preprocessing
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
        return view_size(self.img_size, scale)

    def unmeasured_geometries(self, views: Sequence[tuple[float, bool]] | None = None) -> list[tuple[str | None, int]]:
        """The ``(layer, input size)`` geometries that ``views`` (default: :meth:`views`) need and the model has not
        had measured yet (empty with ``align="none"``): :meth:`measure_geometries` measures them, or the first
        analysis does."""
        if self.align == "none":
            return []
        sizes = sorted({self.view_size(scale) for scale, _ in (views or self.views())})
        layers = [self.map_method.map_layer(self.model)]
        if getattr(self.map_method, "align", False):  # fused layers: each its own geometry
            layers += [name for name, _ in self.map_method.chosen_layers(self.model)]
        return [(layer, size) for layer in dict.fromkeys(layers) for size in sizes
                if not known_geometry(self.model, layer, size, self.meta)]

    def measure_geometries(self, pending: Sequence[tuple[str | None, int]]) -> None:
        """Measure the geometries :meth:`unmeasured_geometries` lists (kept for every later analysis)."""
        for layer, size in pending:
            model_geometry(self.model, layer, size, self.meta)

    def frame(self, size: int, width: int, flip: bool = False) -> MapFrame | None:
        """Where the cells of a ``width``-cell-wide map of a ``size``-pixel input sit in the image (a mirrored view's
        once flipped back); ``None`` with ``align="none"``."""
        if self.align == "none":
            return None
        frame = model_geometry(self.model, self.map_method.map_layer(self.model), size, self.meta).frame(size)
        return frame.mirrored(width) if flip else frame

    def _forward_views(self, pixels: Sequence[Tensor], classes: Tensor | None, views: Sequence[tuple[float, bool]],
                       maps: bool = True) -> tuple[Tensor | None, Tensor, MapFrame | None]:
        """Raw maps, probabilities and the maps' frame averaged over ``views`` (maps: ``None`` when ``maps`` is
        False).

        Each scale is resized once; its mirrored view is ``x.flip(-1)`` of the same tensor (maps flipped
        back). Each view is its own forward pass of the batch, so a view's numbers are the same whether it
        is computed alone or with the others; views are averaged in the order given, at the first's grid
        (with ``align="measured"`` each view's maps read where the first view's cells look:
        :func:`~camloc.pipeline.analysis.average_views`)."""
        resized: dict[float, Tensor] = {}
        ordered, frames = [], []
        for scale, flip in views:
            with stage("preprocess"):
                if scale not in resized:
                    resized[scale] = self.to_tensor(pixels, self.view_size(scale))
                x = resized[scale].flip(-1) if flip else resized[scale]
            if maps:
                raw, logits = self._maps(x, classes)
                frames.append(self.frame(x.shape[-1], raw.shape[-1], flip))
                raw = raw.flip(-1) if flip else raw
            else:
                with stage("forward"), torch.inference_mode(), self._autocast():
                    raw, logits = None, self.model(x)[0].float()
            ordered.append((raw, probabilities(logits, self.meta["activation"])))
        if not maps:
            return None, sum_in_order([p for _, p in ordered]) / len(ordered), None
        return average_views(ordered, frames)

    def analyze(self, images: Sequence[ImageSource] | ImageSource,
                classes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                views: Sequence[tuple[float, bool]] | None = None) -> list[Analysis]:
        """One forward pass (per TTA view) over a batch (a list or tuple, empty: ``[]``; one image alone is a batch
        of one, :func:`as_batch`); maps of ``classes`` (default: all classes; a list of class lists: each image's
        own).

        A ``per_class`` method (the gradient methods: one batched backward pass per class) computes,
        without ``classes``, the maps of the classes the recipe gates in for each image, from the
        probabilities of a first forward pass; each image has its own classes (one backward pass per
        class *slot*: as many as the image with the most gated classes). ``views``: compute only these
        of :meth:`views` (an interactive caller caches each view and joins them with
        :meth:`Analysis.average`, which gives exactly the TTA analysis).
        """
        batch = as_batch(images)
        classes = self.checked_classes(classes, len(batch))  # refused before any image is decoded
        return self.analyze_batch(self.pixels(batch), classes, views).images() if batch else []

    def checked_classes(self, classes: Any, count: int) -> list[int] | list[list[int]] | None:
        """``classes`` of :meth:`analyze` checked once (:func:`~camloc.boxes.class_indices`): ``None``, one list
        of class indices for every image, or one list per image for ``count`` images (a ``ValueError``
        otherwise)."""
        if per_image_classes(classes):
            if len(classes) != count:
                raise ValueError(f"{count} images but class lists for {len(classes)}")
            return [class_indices(own, len(self.class_names)) for own in classes]
        return None if classes is None else class_indices(classes, len(self.class_names))

    def analyze_batch(self, pixels: Sequence[Tensor], classes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                      views: Sequence[tuple[float, bool]] | None = None) -> BatchAnalysis:
        """:meth:`analyze` of decoded ``uint8 (3, H, W)`` images (on any device; at least one), kept as one batch.

        Maps of per-image classes (given, or gated for a ``per_class`` method) are computed in per-image class
        slots (as many backward passes as the image with the most classes) and held as the union of the
        batch's classes with a per-image ``held`` mask."""
        if not len(pixels):
            raise ValueError("analyze_batch needs at least one image (analyze and detect take empty lists)")
        pixels = [check_pixels(p, f"image {i}") for i, p in enumerate(pixels)]
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
            _, probs, _ = self._forward_views(pixels, None, views, maps=False)
            gate = self.select(probs)
        if gate is None:
            wanted = None if classes is None else torch.as_tensor(classes, dtype=torch.long, device=self.device)
            maps, probs, frame = self._forward_views(pixels, wanted, views)
            held = torch.arange(num_classes, device=self.device) if wanted is None else wanted
            return BatchAnalysis(sizes, probs, held, maps, views, frame=frame)
        slots, counts = gated_slots(gate)
        slot_maps, probs, frame = self._forward_views(pixels, slots, views)
        return BatchAnalysis.from_slots(sizes, probs, slots, counts, slot_maps, views, frame)

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
        return recipe_detections(analysis, chosen, self.supported, self.category_ids, image_id, classes,
                                 raw=not self.max_dets)

    def baseline_detections(self, analysis: Analysis, kind: str, image_id: int | None = None) -> list[dict[str, Any]]:
        """Boxes that ignore the maps (see :func:`baseline_detections`), for the recipe's classes."""
        return baseline_detections(analysis, kind, self.recipe, self.supported, self.category_ids, image_id,
                                   raw=not self.max_dets)

    def detect(self, images: Sequence[ImageSource] | ImageSource, image_ids: Sequence[int] | None = None,
               classes: Sequence[Sequence[int]] | None = None) -> Detections:
        """Detections of a batch as flat arrays (:class:`~camloc.evaluation.Detections`): one forward pass per
        view for the whole batch, then the recipe's box stage for the whole batch (on the device for the
        grid recipes). ``image_ids`` default to the images' positions. A batch is a list or tuple (empty: no
        detections); one image alone is a batch of one (:func:`~camloc.pipeline.predictor.as_batch`).
        ``classes``: one list of class indices per image — only their maps are computed and only they can get
        boxes (the recipe's gate still applies: with ``classes="all"`` in the recipe, each image's listed classes
        are exactly those boxed)."""
        images = as_batch(images)
        ids = list(range(len(images))) if image_ids is None else list(image_ids)
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        if not images:
            return Detections([])
        if classes is not None and not per_image_classes(classes):
            raise ValueError("classes of detect() must be one list of class indices per image")
        pixels = self.pixels(images)
        parts = self._halving.run(list(range(len(pixels))),
                                  lambda part: self._detect([pixels[i] for i in part], [ids[i] for i in part],
                                                            None if classes is None else [classes[i] for i in part]),
                                  lambda i: f"image {ids[i]}")
        return Detections.concatenate(parts)

    def _detect(self, pixels: Sequence[Tensor], ids: Sequence[int],
                classes: Sequence[Sequence[int]] | None = None) -> Detections:
        """:meth:`detect` of decoded images that fit in device memory together."""
        batch = self.analyze_batch(pixels, classes)
        gate = batch.gate(self.recipe, self.supported)
        boxes = self.recipe.batch_boxes(batch.raw_maps, batch.probs, batch.classes, gate, batch.sizes, self.max_memory,
                                        batch.frame)
        return batch_detections(boxes, ids, self.category_ids, self.max_dets)
