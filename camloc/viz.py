"""Pictures of maps and boxes: heatmap overlay, labelled boxes, top-k CAM grid, multi-class overlay.

Every function takes an RGB ``PIL.Image`` (or ``H×W×3`` uint8 array) and normalised maps in
[0, 1], and returns a new RGB ``PIL.Image``; inputs are never modified.

Classes are coloured by their **category id** (the id a dataset and a model's ``category_ids``
agree on), so a class has the same colour on every page, picture and plot. Boxes and labels are
sized from the image, so they stay readable when the picture is shown small, and are outlined in
black so that any class colour stays visible over any heatmap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "hot": cv2.COLORMAP_HOT}

#: Categorical palette: the first 96 colours of the Glasbey sequence (each colour as far as possible
#: from all earlier ones) with chroma ≥ 20 and lightness ≤ 70, i.e. no greys and nothing pale on
#: white — colorcet's ``glasbey_dark`` (https://colorcet.holoviz.org, CC-BY 4.0). Index = category id,
#: which covers COCO's ids 1–90 without repeats.
PALETTE = tuple(f"#{c}" for c in (
    "d60000", "8c3bff", "018700", "00acc6", "e6a500", "ff7ed1", "6b004f", "573b00", "005659", "15e18c", "0000dd",
    "a17569", "bcb6ff", "bf03b8", "645472", "790000", "0774d8", "729a7c", "ff7752", "004b00", "8e7b01", "f2007b",
    "8eba00", "a57bb8", "5901a3", "e2afaf", "a03a52", "a1c8c8", "9e4b00", "546744", "bac389", "5e7b87", "60383b",
    "8287ff", "380000", "e252ff", "2f5282", "7ecaff", "c4668e", "008069", "919eb6", "cc7407", "7e2a8e", "00bda3",
    "2db152", "4d33ff", "00e400", "ff00cd", "c85748", "e49cff", "1ca1ff", "6e70aa", "c89a69", "77563b", "03dae6",
    "c1a3c3", "ff6989", "ba00fd", "915280", "9e0174", "93a14f", "364424", "af6dff", "596d00", "ff3146", "828056",
    "006d2d", "8956af", "5949a3", "773416", "85c39a", "5e1123", "d48580", "a32818", "0087b1", "ca0044", "ffa056",
    "eb4d00", "6b9700", "528549", "755900", "c8c33f", "91d370", "4b9793", "4d230c", "60345b", "8300cf", "8a0031",
    "9e6e31", "ac8399", "c63189", "015438", "086b83", "87a8eb", "6466ef", "c35dba"))
GROUND_TRUTH_COLOR = (255, 255, 255)
HALO = (0, 0, 0)


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


def class_hex(category_id: int) -> str:
    """The ``#rrggbb`` colour of the class with this category id (see :data:`PALETTE`)."""
    return PALETTE[int(category_id) % len(PALETTE)]


def class_color(category_id: int) -> tuple[int, int, int]:
    """The RGB colour of the class with this category id, the same on every page and plot."""
    code = class_hex(category_id)
    return int(code[1:3], 16), int(code[3:5], 16), int(code[5:7], 16)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (WCAG relative luminance)."""
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in background]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (0, 0, 0) if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else (255, 255, 255)


def format_score(score: float) -> str:
    """A score or probability with 3 significant digits (``0.862``, ``0.0523``, ``1.00``)."""
    return f"{score:#.3g}"


def label_size(width: int, height: int) -> int:
    """Label font size in image pixels: about 1/22 of the longer side, at least 12 — about 13 px on screen
    when the picture is shown a third of a screen wide."""
    return max(12, round(max(width, height) / 22))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def draw_boxes(image: Image.Image | np.ndarray, detections: Sequence[dict], names: dict[int, str] | None = None,
               color: tuple[int, int, int] | None = None, width: int | None = None) -> Image.Image:
    """Draw COCO ``detections`` or annotations (``bbox`` [x, y, w, h], ``category_id``, optional ``score``).

    Each box is outlined in its class colour (or ``color``) with a thin black halo, and labelled
    ``"name score"`` (3 significant digits) — or just ``"name"`` when it has no score (ground
    truth). Line width and label size follow the image size (``width`` overrides the line width).
    Boxes are drawn from the lowest score up, so the best box is on top; labels are placed from the
    highest score down, and a label that would cover one already placed is left out (its box is
    still drawn), so that a picture with many boxes stays readable.
    """
    canvas = Image.fromarray(_rgb(image).copy())
    draw = ImageDraw.Draw(canvas)
    font = _font(label_size(*canvas.size))
    width = width or max(2, round(max(canvas.size) / 160))
    ranked = sorted(detections, key=lambda d: -d["score"] if d.get("score") is not None else 0.0)
    for det in reversed(ranked):
        x, y, w, h = (float(v) for v in det["bbox"])
        x1, y1 = x + max(w - 1, 0), y + max(h - 1, 0)
        draw.rectangle([x - 1, y - 1, x1 + 1, y1 + 1], outline=HALO, width=width + 2)
        draw.rectangle([x, y, x1, y1], outline=color or class_color(det.get("category_id", 0)), width=width)
    placed: list[tuple[float, float, float, float]] = []
    for det in ranked:
        category = det.get("category_id", 0)
        label = str((names or {}).get(category, category))
        if det.get("score") is not None:
            label += f" {format_score(det['score'])}"
        _draw_label(draw, det["bbox"], label, color or class_color(category), font, canvas.size, placed)
    return canvas


def _draw_label(draw: ImageDraw.ImageDraw, bbox: Sequence[float], label: str, fill: tuple[int, int, int],
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont, size: tuple[int, int],
                placed: list[tuple[float, float, float, float]]) -> None:
    """A filled tag with ``label`` just above the box's top-left corner, or just inside it, wherever it
    covers no tag in ``placed`` (then it is added there); nowhere free: no tag."""
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(2, round((bottom - top) / 6))
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, float(bbox[0])), max(0.0, size[0] - tag_w))
    for y in (float(bbox[1]) - tag_h, float(bbox[1])):
        tag = (x, y, x + tag_w, y + tag_h)
        if y >= 0 and not any(tag[0] < o[2] and o[0] < tag[2] and tag[1] < o[3] and o[1] < tag[3] for o in placed):
            placed.append(tag)
            draw.rectangle(tag, fill=fill, outline=HALO)
            draw.text((x + pad - left, y + pad - top), label, fill=text_color(fill), font=font)
            return


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
    font = _font(max(12, round(tile / 18)))
    label_h = font.size + 6 if isinstance(font, ImageFont.FreeTypeFont) else 16
    grid = Image.new("RGB", (columns * size[0], rows * (size[1] + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    small = base.resize(size, Image.BILINEAR)
    for i, (heat, title) in enumerate(zip(heats, titles)):
        col, row = i % columns, i // columns
        left, top = col * size[0], row * (size[1] + label_h)
        grid.paste(overlay_heatmap(small, heat, alpha, colormap), (left, top + label_h))
        draw.text((left + 3, top + 3), title, fill=(0, 0, 0), font=font)
    return grid


def multiclass_overlay(image: Image.Image | np.ndarray, heats: np.ndarray, category_ids: Sequence[int],
                       alpha: float = 0.6, floor: float = 0.2) -> Image.Image:
    """One colour per class: each pixel takes the colour of its hottest class, blended by that heat.

    ``heats (K, H, W)`` in [0, 1], one map per entry of ``category_ids`` (which pick the colours, see
    :func:`class_color`); pixels whose hottest heat is below ``floor`` stay as they are.
    """
    rgb = _rgb(image).astype(np.float32)
    heats = np.stack([_fit(h, *rgb.shape[:2]) for h in np.asarray(heats)])
    winner = heats.argmax(0)
    strength = heats.max(0)
    palette = np.array([class_color(int(k)) for k in category_ids], dtype=np.float32)
    weight = (alpha * np.clip((strength - floor) / max(1e-6, 1 - floor), 0, 1))[..., None]
    blended = rgb * (1 - weight) + palette[winner] * weight
    return Image.fromarray(blended.round().astype(np.uint8))
