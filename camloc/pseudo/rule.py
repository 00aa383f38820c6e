"""The rule that turns a source's boxes into pseudo-labels: only the image's labelled classes, no tiny
boxes, distinct instances, the best ones of each class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from camloc.evaluation import Detections


@dataclass(frozen=True)
class PseudoRule:
    """Which boxes of an image become its pseudo-labels, for each class of its image-level labels:

    1. boxes of a class the image is *not* labelled with are dropped (the labels are known to be right);
    2. boxes whose width or height is below ``min_side`` × the image's shorter side are dropped;
    3. greedy NMS per (image, class) at IoU ``nms_iou`` (stricter than the recipes' 0.5: a pseudo-label should
       be one instance, not a peak inside its object's box);
    4. of the rest, those scoring at least ``min_relative`` × the class's best box in that image, at most
       ``top_k`` of them (the best first).

    The best box of each labelled class survives 3 and 4 by construction; an image left with a labelled class
    without any box is not labelled completely, and the caller leaves it out (see :func:`~camloc.pseudo.
    labelling.pseudo_labels`).
    """

    min_relative: float = 0.5
    top_k: int = 3
    nms_iou: float = 0.3
    min_side: float = 0.02

    def __post_init__(self) -> None:
        checks = [(0.0 <= self.min_relative <= 1.0, "min_relative must be in [0, 1]"),
                  (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 1,
                   "top_k must be an integer ≥ 1"),
                  (0.0 < self.nms_iou <= 1.0, "nms_iou must be in (0, 1]"),
                  (0.0 <= self.min_side < 1.0, "min_side must be in [0, 1)")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems) + f" (got {self})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def keep(self, found: Detections, labels: dict[int, list[int]], sizes: dict[int, tuple[int, int]]) -> Detections:
        """The pseudo-labels among ``found``: ``labels`` maps each image id to its labelled category ids, ``sizes``
        to its ``(H, W)``. Sorted by image (in ``labels``' order), category, best score first."""
        order = {image_id: i for i, image_id in enumerate(labels)}
        row = np.array([order.get(i, -1) for i in found.image.tolist()], np.int64)
        categories = np.unique(np.concatenate([found.category, *(np.asarray(c, np.int64) for c in labels.values())]))
        column = np.searchsorted(categories, found.category)
        allowed = np.zeros((len(order), len(categories)), bool)
        for image_id, cats in labels.items():
            allowed[order[image_id], np.searchsorted(categories, cats)] = True
        side = np.array([min(sizes[i]) for i in labels], np.float64)
        keep = (row >= 0) & allowed[np.maximum(row, 0), column]
        keep &= (found.bbox[:, 2:] >= self.min_side * side[np.maximum(row, 0), None]).all(1)
        keep &= found.bbox[:, 2:].min(1) > 0
        index = np.flatnonzero(keep)
        group = row[index] * len(categories) + column[index]
        xyxy = torch.from_numpy(np.concatenate([found.bbox[index, :2], found.bbox[index, :2] + found.bbox[index, 2:]],
                                               1))
        survivors = index[batched_nms(xyxy, torch.from_numpy(found.score[index]), torch.from_numpy(group),
                                      self.nms_iou).numpy()]
        group = row[survivors] * len(categories) + column[survivors]
        ranked = survivors[np.lexsort((-found.score[survivors], group))]
        group = row[ranked] * len(categories) + column[ranked]
        starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
        first = np.repeat(starts, np.diff(np.r_[starts, len(group)])) if len(group) else np.zeros(0, np.int64)
        rank = np.arange(len(group)) - first
        best = found.score[ranked][first] if len(group) else np.zeros(0)
        chosen = ranked[(rank < self.top_k) & (found.score[ranked] >= self.min_relative * best)]
        return found.rows(chosen)


#: The filter each kind of source gets unless told otherwise (picked on the synthetic seed-2 tuning set, never on a
#: measured set: docs/decisions.md, "Self-training a detector", point 6). A classifier's recipe boxes are kept
#: broadly — the recipe has already suppressed its duplicates (NMS at 0.5), and a map's weaker instances score far
#: below its best — so that the detector sees more of the instances; a detector's boxes, several overlapping
#: candidates per object, strictly — its best three per class after NMS at 0.3 — so that a duplicate is not
#: taught as another instance.
DEFAULT_RULES: dict[str, PseudoRule] = {"classifier": PseudoRule(min_relative=0.3, top_k=8, nms_iou=0.5),
                                        "detector": PseudoRule()}


def default_rule(kind: str, **changes: float | int | None) -> PseudoRule:
    """The default filter of a ``"classifier"`` or ``"detector"`` source, with the options in ``changes`` that are
    not ``None`` changed (a bad value: :class:`ValueError` naming it)."""
    return replace(DEFAULT_RULES[kind], **{name: value for name, value in changes.items() if value is not None})
