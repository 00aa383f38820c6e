"""Pictures of maps and boxes: heatmap overlay, labelled boxes, top-k CAM grid, multi-class overlay.

Every function takes an RGB ``PIL.Image`` (or ``H×W×3`` uint8 array) and normalised maps in
[0, 1], and returns a new RGB ``PIL.Image``; inputs are never modified.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "hot": cv2.COLORMAP_HOT}


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)


def _fit(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    return heat


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``H×W`` map in [0, 1] → ``H×W×3`` RGB uint8 through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    u8 = (np.clip(heat, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: Image.Image | np.ndarray, heat: np.ndarray, alpha: float = 0.5,
                    colormap: str = "jet") -> Image.Image:
    """``(1 − α)·image + α·colormap(heat)``; ``heat`` is resized to the image if needed."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb(image)
    colour = colorize(_fit(heat, *rgb.shape[:2]), colormap)
    return Image.fromarray(cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0))


def class_color(index: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour for class ``index`` (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Image.Image | np.ndarray, detections: Sequence[dict], names: dict[int, str] | None = None,
               color: tuple[int, int, int] | None = None, width: int = 3) -> Image.Image:
    """Draw COCO-results ``detections`` (``bbox`` [x, y, w, h], ``category_id``, ``score``) with labels."""
    canvas = Image.fromarray(_rgb(image).copy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for det in detections:
        x, y, w, h = det["bbox"]
        category = det.get("category_id", 0)
        outline = color or class_color(category)
        draw.rectangle([x, y, x + max(w - 1, 0), y + max(h - 1, 0)], outline=outline, width=width)
        label = f"{(names or {}).get(category, category)} {det.get('score', 0.0):.2f}"
        left, top, right, bottom = draw.textbbox((x, y), label, font=font)
        top_y = max(0, y - (bottom - top) - 2)
        draw.rectangle([x, top_y, x + right - left + 4, top_y + bottom - top + 2], fill=outline)
        draw.text((x + 2, top_y), label, fill=(0, 0, 0), font=font)
    return canvas


def cam_grid(image: Image.Image | np.ndarray, heats: Sequence[np.ndarray], titles: Sequence[str],
             columns: int = 4, alpha: float = 0.5, colormap: str = "jet", tile: int = 256) -> Image.Image:
    """A grid of overlays, one tile per map, each titled (e.g. the top-k classes with probabilities)."""
    if len(heats) != len(titles) or not heats:
        raise ValueError("cam_grid needs one title per map and at least one map")
    base = Image.fromarray(_rgb(image))
    scale = tile / max(base.size)
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    columns = min(columns, len(heats))
    rows = -(-len(heats) // columns)
    label_h = 16
    grid = Image.new("RGB", (columns * size[0], rows * (size[1] + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    small = base.resize(size, Image.BILINEAR)
    for i, (heat, title) in enumerate(zip(heats, titles)):
        col, row = i % columns, i // columns
        left, top = col * size[0], row * (size[1] + label_h)
        grid.paste(overlay_heatmap(small, heat, alpha, colormap), (left, top + label_h))
        draw.text((left + 3, top + 2), title, fill=(0, 0, 0), font=ImageFont.load_default())
    return grid


def multiclass_overlay(image: Image.Image | np.ndarray, heats: np.ndarray, classes: Sequence[int],
                       alpha: float = 0.6, floor: float = 0.2) -> Image.Image:
    """One colour per class: each pixel takes the colour of its hottest class, blended by that heat.

    ``heats (K, H, W)`` in [0, 1]; pixels whose hottest heat is below ``floor`` stay as they are.
    """
    rgb = _rgb(image).astype(np.float32)
    heats = np.stack([_fit(h, *rgb.shape[:2]) for h in np.asarray(heats)])
    winner = heats.argmax(0)
    strength = heats.max(0)
    palette = np.array([class_color(int(k)) for k in classes], dtype=np.float32)
    weight = (alpha * np.clip((strength - floor) / max(1e-6, 1 - floor), 0, 1))[..., None]
    blended = rgb * (1 - weight) + palette[winner] * weight
    return Image.fromarray(blended.round().astype(np.uint8))
