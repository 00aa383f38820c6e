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
    return best_match(box, others)[0]


def best_match(box: Sequence[float], others: Sequence[Sequence[float]]) -> tuple[float, int]:
    """``(IoU, index)`` of the box among ``others`` that overlaps ``box`` most (``(0.0, -1)`` for none)."""
    return max(((iou(box, o), i) for i, o in enumerate(others)), key=lambda pair: pair[0], default=(0.0, -1))
