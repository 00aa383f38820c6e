"""The boxes picture the image pages share: ground truth (white, class name only) under the detections."""

from __future__ import annotations

from typing import Any

from PIL import Image

from camloc.viz import GROUND_TRUTH_COLOR, draw_boxes


def boxes_picture(overlay: Image.Image, detections: list[dict[str, Any]], truth: list[list[float]] | None,
                  category_id: int, class_name: str) -> Image.Image:
    """``overlay`` with the ground-truth boxes of the class (if any) and its detections (class colour, scores)."""
    names = {category_id: class_name}
    if truth:
        overlay = draw_boxes(overlay, [{"bbox": b, "category_id": category_id} for b in truth], names,
                             color=GROUND_TRUTH_COLOR)
    return draw_boxes(overlay, detections, names)
