"""Small box arithmetic for the pages (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Sequence


def iou(box: Sequence[float], other: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    w = min(box[0] + box[2], other[0] + other[2]) - max(box[0], other[0])
    h = min(box[1] + box[3], other[1] + other[3]) - max(box[1], other[1])
    inter = max(w, 0) * max(h, 0)
    union = box[2] * box[3] + other[2] * other[3] - inter
    return inter / union if union > 0 else 0.0


def best_iou(box: Sequence[float], others: Sequence[Sequence[float]]) -> float:
    """Highest IoU of ``box`` with any of ``others`` (0 when there are none)."""
    return max((iou(box, o) for o in others), default=0.0)
