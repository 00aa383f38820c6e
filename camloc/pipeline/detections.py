"""Boxes and detections of analysed images: a recipe's scored boxes as COCO-results dicts or flat
:class:`~camloc.evaluation.Detections`, and the map-free baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camloc.boxes import BatchBoxes, Recipe, ScoredBoxes
from camloc.evaluation import Detections
from camloc.pipeline.analysis import TTA_SCALES, Analysis

#: Detections kept per image by default: COCO's results convention (its AP reads at most 100 per image and class;
#: torchvision's detectors keep ``box_detections_per_img=100``).
MAX_DETECTIONS = 100


def best_per_image(image: np.ndarray, score: np.ndarray, limit: int) -> np.ndarray:
    """Boolean mask of each image's ``limit`` best-scored rows (ties: the earlier row); every row if ``limit`` is 0."""
    keep = np.ones(len(image), dtype=bool)
    if not limit or not len(image):
        return keep
    order = np.lexsort((np.arange(len(image)), -score, image))
    grouped = image[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep[order[rank >= limit]] = False
    return keep


def batch_detections(boxes: BatchBoxes, image_ids: Sequence[int], category_ids: Sequence[int],
                     max_dets: int = 0) -> Detections:
    """A batch's boxes as detections: ``image_id`` from each box's position in the batch, ``category_id`` from its
    class index; at most ``max_dets`` per image, the best scored (0: all), in their order."""
    boxes = boxes.rows(best_per_image(boxes.image, boxes.score, max_dets))
    return Detections.from_arrays(np.asarray(image_ids, np.int64)[boxes.image],
                                  np.asarray(category_ids, np.int64)[boxes.class_index], boxes.xywh, boxes.score)



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

