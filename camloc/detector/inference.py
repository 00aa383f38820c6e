"""``Detector``: images in, detections out — :class:`~camloc.pipeline.Localizer`'s sibling for detector checkpoints.

The same inputs (paths, bytes, PIL images, arrays, or decoded ``uint8 (3, H, W)`` tensors) and the same
outputs (:class:`~camloc.evaluation.Detections` from :meth:`Detector.detect`, COCO-results dicts from
``predict`` / ``predict_batch``: both share :class:`~camloc.pipeline.predictor.Predictor`), so
``python -m eval``, the app and users call either one alike. A detector has no class maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camloc.detector.building import parse_name
from camloc.detector.checkpoints import load_detector
from camloc.evaluation import Detections
from camloc.io.images import ImageSource
from camloc.pipeline.detections import MAX_DETECTIONS
from camloc.pipeline.localizer import resolve_precision
from camloc.pipeline.predictor import Predictor, as_batch

#: The lowest score kept (torchvision's default).
SCORE_THRESHOLD = 0.05
#: What ``max_dets=0`` (every detection) asks torchvision for.
UNCAPPED = 1 << 30


def set_output_limits(model: nn.Module, score_threshold: float, max_dets: int) -> None:
    """The lowest score and the number of detections (0: all) a torchvision detector returns per image (Faster
    R-CNN keeps them on its box head, RetinaNet and FCOS on themselves)."""
    owner = getattr(model, "roi_heads", model)
    owner.score_thresh, owner.detections_per_img = float(score_threshold), int(max_dets) or UNCAPPED


class Detector(Predictor):
    """A detection network and its metadata (see :func:`camloc.detector.build_detector`).

    ``device`` (default: CUDA when available), ``precision`` the network's arithmetic (``auto``: bf16 on a GPU
    that has it, float32 on a CPU; see :func:`~camloc.pipeline.localizer.resolve_precision`; boxes and scores
    are float32), ``score_threshold`` and ``max_dets`` per image (0: every detection; as the Localizer's).
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any], device: str | torch.device | None = None,
                 precision: str = "auto", score_threshold: float = SCORE_THRESHOLD,
                 max_dets: int = MAX_DETECTIONS):
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
        if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 0:
            raise ValueError(f"max_dets must be a whole number ≥ 0 (0: every detection), got {max_dets!r}")
        parse_name(meta["arch"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        set_output_limits(self.model, score_threshold, max_dets)
        self.meta = meta
        self.class_names: list[str] = list(meta["class_names"])
        self.category_ids: list[int] = list(meta["category_ids"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Detector:
        """Load a detector checkpoint (``weights_only=True``; see :func:`camloc.detector.load_detector`)."""
        model, meta, _ = load_detector(path)
        return cls(model, meta, **options)

    def detect(self, images: Sequence[ImageSource | Tensor] | ImageSource, image_ids: Sequence[int] | None = None
               ) -> Detections:
        """Detections of a batch as flat arrays (one forward pass for the whole batch); ``bbox`` ``[x, y, w, h]``
        in each image's own pixels, ``category_id`` the dataset's. ``image_ids`` default to the positions; one
        image alone is a batch of one (:func:`~camloc.pipeline.predictor.as_batch`)."""
        images = as_batch(images)
        ids = list(range(len(images))) if image_ids is None else list(image_ids)
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        if not len(images):
            return Detections.from_arrays(*(np.zeros(0),) * 4)
        pixels = self.pixels(images)
        batch = [p.to(self.device, non_blocking=True).float().div_(255) for p in pixels]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                                                    enabled=self.precision is not None):
            found = self.model(batch)
        counts = [len(f["scores"]) for f in found]
        boxes = torch.cat([f["boxes"] for f in found]).float().cpu().numpy().astype(np.float64)
        labels = torch.cat([f["labels"] for f in found]).cpu().numpy()
        scores = torch.cat([f["scores"] for f in found]).float().cpu().numpy().astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        return Detections.from_arrays(np.repeat(np.asarray(ids, np.int64), counts),
                                      np.asarray(self.category_ids, np.int64)[labels - 1], xywh, scores)
