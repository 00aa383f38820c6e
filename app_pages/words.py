"""Words the pages share: counts with their plural, and how the ground truth of a picture is named."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 box"``, ``"2 boxes"``: ``count`` and the word in its number (``many``: an irregular plural; else
    ``es`` after s, x, ch or sh, ``s`` otherwise)."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or word + ('es' if word.endswith(('s', 'x', 'ch', 'sh')) else 's')}"


def truth_keys(count: int) -> str:
    """How a picture marks ``count`` ground-truth boxes: ``"white box GT1"``, ``"white boxes GT1–GT3"``."""
    return "white box GT1" if count == 1 else f"white boxes GT1–GT{count}"


def truth_caption(count: int | None, class_name: str, image_name: str) -> str:
    """What the ground truth says of ``class_name`` in the image: ``count`` objects (``None``: the file has
    no ground truth for the image or class)."""
    if count is None:
        return "no ground truth for this image and class"
    if count == 0:
        return f"“{class_name}” is not in the ground truth of {image_name}"
    return f"{plural(count, f'“{class_name}” object')} in the ground truth of {image_name} ({truth_keys(count)})"
