"""``Localizer``: images in, COCO-results detections out — the one object the app, CLIs and users call.

``predict(image)`` = preprocess → one forward pass → maps of the requested classes → boxes →
scores. :meth:`Localizer.analyze` and :meth:`Localizer.detections` expose the two halves so that
an interactive caller runs the network once per image and re-derives boxes as settings change.
"""


from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from camloc.boxes import DEFAULT_RECIPE, Recipe, ScoredBoxes, class_indices, make_recipe
from camloc.cam import DEFAULT_METHOD, MapMethod, class_activation_maps, make_method
from camloc.evaluation import Detections
from camloc.io.images import ImageSource, load_image
from camloc.io.preprocess import normalise, pixels_of, resize_square
from camloc.models import CamModel, load_model, probabilities
from camloc.pipeline.analysis import (
    TTA_SCALES,
    Analysis,
    BatchAnalysis,
    average_views,
    gated_slots,
    per_image_classes,
    sum_in_order,
)
from camloc.pipeline.detections import (
    MAX_DETECTIONS,
    baseline_detections,
    batch_detections,
    recipe_box_options,
    recipe_boxes,
    recipe_detections,
)
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



class Localizer:
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
    detections :meth:`detect` keeps per image, the best scored (default 100, COCO's convention; 0: all);
    ``max_memory`` the bytes the box stage may hold at once (``"2GiB"``, or a number; default:
    :func:`~camloc.runtime.memory.memory_budget`). A batch that runs out of device memory in :meth:`detect` is run
    again in halves (and later batches at that size).
    """

    def __init__(self, model: CamModel, meta: dict[str, Any], method: str | MapMethod = DEFAULT_METHOD,
                 recipe: str | Recipe = DEFAULT_RECIPE, threshold: str | float | None = None, boxes: str | None = None,
                 classes: str | Sequence[int] | None = None, img_size: int | None = None, tta: bool = False,
                 device: str | torch.device | None = None, gradcam_layer: str | None = None,
                 precision: str = "auto", max_dets: int = MAX_DETECTIONS, max_memory: int | str | None = None,
                 **recipe_options: Any):
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
    def pixels(self, images: Sequence[ImageSource]) -> list[Tensor]:
        """Any image sources (:func:`camloc.io.images.load_image`: EXIF-upright RGB) → ``uint8 (3, H, W)`` each;
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
        pixels = self.pixels(images)
        parts = self._halving.run(list(range(len(pixels))), lambda part: self._detect([pixels[i] for i in part],
                                                                                      [ids[i] for i in part]),
                                  lambda i: f"image {ids[i]}")
        return Detections.concatenate(parts)

    def _detect(self, pixels: Sequence[Tensor], ids: Sequence[int]) -> Detections:
        """:meth:`detect` of decoded images that fit in device memory together."""
        batch = self.analyze_batch(pixels)
        gate = batch.gate(self.recipe, self.supported)
        boxes = self.recipe.batch_boxes(batch.raw_maps, batch.probs, batch.classes, gate, batch.sizes, self.max_memory)
        return batch_detections(boxes, ids, self.category_ids, self.max_dets)

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

