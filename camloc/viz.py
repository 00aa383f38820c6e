"""Pictures of maps and boxes: heatmap overlay and its colour bar, labelled boxes, top-k CAM grid,
multi-class overlay.

Every function takes an RGB ``PIL.Image`` (or ``H×W×3`` uint8 array) and normalised maps in
[0, 1], and returns a new RGB ``PIL.Image``; inputs are never modified.

Colours are chosen **per picture**: the classes shown together take :func:`distinct_colors` in
the order of the list beside them, each as far as possible (CIEDE2000) from the ones before it,
none grey, pale or near black. Boxes and labels are sized from the image, so they stay readable
when the picture is shown small, and are outlined in black so that any colour stays visible over
any heatmap. Every box gets a tag: its full label where one fits without covering another tag,
else its short key (the rank of a detection, ``GT1``… for ground truth), which the table beside
the picture resolves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache, lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import deltaE_ciede2000, rgb2lab

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "hot": cv2.COLORMAP_HOT}

#: Class colours are drawn from the sRGB colours (a 15-step grid) with CIE L* in this range — nothing
#: pale on white, nothing near black — and chroma C*ab of at least :data:`MIN_CHROMA`: no greys.
LIGHTNESS = (35.0, 75.0)
MIN_CHROMA = 40.0
#: The first class colour: magenta, which none of :data:`COLORMAPS` contains, so the boxes of a
#: picture's (first) class stand out over any heatmap.
FIRST_COLOR = (255, 0, 255)
GROUND_TRUTH_COLOR = (255, 255, 255)
HALO = (0, 0, 0)
#: Pixels kept free between two tags, so that neighbouring tags read as two.
TAG_GAP = 3


@cache
def _candidate_colors() -> tuple[np.ndarray, np.ndarray]:
    """The class-colour candidates: sRGB (n, 3) uint8 and their CIELAB coordinates (n, 3)."""
    levels = np.arange(0, 256, 15)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = rgb2lab(rgb[None] / 255.0)[0]
    keep = (np.hypot(lab[:, 1], lab[:, 2]) >= MIN_CHROMA) & (lab[:, 0] >= LIGHTNESS[0]) & (lab[:, 0] <= LIGHTNESS[1])
    return rgb[keep].astype(np.uint8), lab[keep]


@cache
def _color_sequence(n: int) -> tuple[tuple[int, int, int], ...]:
    rgb, lab = _candidate_colors()
    anchor = rgb2lab(np.array([[FIRST_COLOR]], np.float64) / 255.0)[0, 0]
    chosen = [int(np.argmin(deltaE_ciede2000(lab, np.broadcast_to(anchor, lab.shape))))]
    nearest = deltaE_ciede2000(lab, np.broadcast_to(lab[chosen[0]], lab.shape))
    while len(chosen) < n:  # farthest-point sampling: each new colour maximises its distance to the nearest chosen one
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, deltaE_ciede2000(lab, np.broadcast_to(lab[chosen[-1]], lab.shape)))
    return tuple(tuple(int(v) for v in rgb[i]) for i in chosen)


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` RGB colours for the classes shown together, in order: the candidate nearest to
    :data:`FIRST_COLOR` first, then each the candidate farthest from all before it in CIEDE2000
    (scikit-image's ``deltaE_ciede2000``), so any first ``k`` are as far apart as this greedy rule makes
    them (ΔE2000 ≥ 32 for 8 colours, ≥ 24 for 12, ≥ 18 for 16). The same ``n`` gives the same list."""
    if n < 0:
        raise ValueError(f"the number of colours must be ≥ 0, got {n}")
    return list(_color_sequence(max(n, 1))[:n])


def color_hex(color: Sequence[int]) -> str:
    """``(r, g, b)`` → ``#rrggbb``."""
    return "#" + "".join(f"{int(c):02x}" for c in color)


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


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (WCAG relative luminance)."""
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in background]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (0, 0, 0) if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else (255, 255, 255)


def format_score(score: float) -> str:
    """A score, probability or IoU with 3 significant digits, written the way the app's tables write a
    number with format ``%.3g`` (JavaScript's ``String(Number(x.toPrecision(3)))``), so that a picture and
    the table beside it show the same text: ``0.57``, ``0.0523``, ``0.000317``, ``1``, ``1.23e-7``."""
    value = Decimal(float(score))
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value < 0 else "Infinity")
    if value == 0:
        return "0"
    rounded = value.quantize(Decimal(1).scaleb(value.adjusted() - 2), rounding=ROUND_HALF_UP)
    if rounded.adjusted() < -6 or rounded.adjusted() >= 21:  # where JavaScript writes an exponent
        return f"{rounded.normalize():e}"
    text = format(rounded, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def label_size(width: int, height: int) -> int:
    """Label font size in image pixels: about 1/22 of the longer side, at least 12 — about 13 px on screen
    when the picture is shown a third of a screen wide."""
    return max(12, round(max(width, height) / 22))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


@dataclass(frozen=True)
class LabelledBox:
    """A box to draw: ``bbox`` ``[x, y, w, h]`` in pixels, its outline ``color``, its ``label`` (e.g.
    ``"1 zebra 0.57"``) and its ``key`` (e.g. ``"1"``), the short name shown where the label finds no
    free place; the table beside the picture resolves the key."""

    bbox: tuple[float, float, float, float]
    color: tuple[int, int, int]
    label: str
    key: str = ""


def _spots(bbox: Sequence[float], tag_w: float, tag_h: float, size: tuple[int, int]) -> np.ndarray:
    """Top-left corners ``(n, 2)`` for a tag of ``tag_w × tag_h`` along a box, in order of preference: above
    its top-left corner, inside it, below the bottom-left corner, inside it, the same on the right; then
    every place along its top and bottom edges (above, inside) and its left and right sides (outside,
    inside), a tag apart. Each kept inside the image, none twice."""
    x, y, w, h = (float(v) for v in bbox)
    corners = [(left, top) for left in (x, x + w - tag_w) for top in (y - tag_h, y, y + h, y + h - tag_h)]
    along_x = np.arange(x, max(x, x + w - tag_w) + 1, max(tag_w, 1.0))
    along_y = np.arange(y, max(y, y + h - tag_h) + 1, max(tag_h, 1.0))
    edges = [(left, top) for top in (y - tag_h, y, y + h, y + h - tag_h) for left in along_x]
    sides = [(left, top) for left in (x - tag_w, x, x + w - tag_w, x + w) for top in along_y]
    spots = np.array(corners + edges + sides, np.float64)
    spots[:, 0] = spots[:, 0].clip(0.0, max(0.0, size[0] - tag_w))
    spots[:, 1] = spots[:, 1].clip(0.0, max(0.0, size[1] - tag_h))
    _, first = np.unique(spots, axis=0, return_index=True)
    return spots[np.sort(first)]


#: How far from its box (in tag widths and heights) a key may go when no spot along the box is free.
NEARBY_TAGS = 2


def _nearby_spots(bbox: Sequence[float], tag_w: float, tag_h: float, size: tuple[int, int]) -> np.ndarray:
    """Top-left corners ``(n, 2)`` for a tag anywhere within :data:`NEARBY_TAGS` tags of a box (a grid of a quarter
    tag wide, half a tag high; kept inside the image, none twice), nearest to the box first: the last places
    a key looks for when every spot along its box (:func:`_spots`) is taken."""
    x, y, w, h = (float(v) for v in bbox)
    lefts = np.arange(x - (NEARBY_TAGS + 1) * tag_w, x + w + NEARBY_TAGS * tag_w + 1, max(tag_w / 4, 1.0))
    tops = np.arange(y - (NEARBY_TAGS + 1) * tag_h, y + h + NEARBY_TAGS * tag_h + 1, max(tag_h / 2, 1.0))
    spots = np.stack(np.meshgrid(lefts, tops), -1).reshape(-1, 2)
    spots[:, 0] = spots[:, 0].clip(0.0, max(0.0, size[0] - tag_w))
    spots[:, 1] = spots[:, 1].clip(0.0, max(0.0, size[1] - tag_h))
    spots = np.unique(spots, axis=0)
    gap_x = np.maximum(0.0, np.maximum(x - (spots[:, 0] + tag_w), spots[:, 0] - (x + w)))
    gap_y = np.maximum(0.0, np.maximum(y - (spots[:, 1] + tag_h), spots[:, 1] - (y + h)))
    return spots[np.argsort(np.hypot(gap_x, gap_y), kind="stable")]


def layout_tags(boxes: Sequence[LabelledBox], size: tuple[int, int],
                measure: Callable[[str], tuple[float, float]]) -> list[tuple[str, tuple[float, ...]] | None]:
    """Where each box's tag goes: ``(text, (x0, y0, x1, y1))`` per box, in order — earlier boxes choose first.

    A box's full label goes at its first spot along the box (:func:`_spots`) that covers no tag placed before it
    (nor comes closer to one than :data:`TAG_GAP` pixels); failing that its key does; failing that, the key goes
    to the free spot nearest the box within :data:`NEARBY_TAGS` tags (:func:`_nearby_spots`); failing that too,
    where it covers the least of the others. So every box is tagged, and tags never overlap while a free spot
    exists near the box. ``measure(text)`` is the tag's ``(width, height)``.
    """
    placed = np.zeros((0, 4))
    result = []
    for box in boxes:
        choice = None
        key = box.key or box.label
        attempts = [(text, _spots) for text in dict.fromkeys(t for t in (box.label, key) if t)]
        for text, where in attempts + ([(key, _nearby_spots)] if key else []):
            tag_w, tag_h = measure(text)
            spots = where(box.bbox, tag_w, tag_h, size)
            tags = np.concatenate([spots, spots + np.array([tag_w, tag_h])], axis=1)
            apart = placed + np.array([-TAG_GAP, -TAG_GAP, TAG_GAP, TAG_GAP])
            covered = (np.clip(np.minimum(tags[:, None, 2], apart[None, :, 2])
                               - np.maximum(tags[:, None, 0], apart[None, :, 0]), 0, None)
                       * np.clip(np.minimum(tags[:, None, 3], apart[None, :, 3])
                                 - np.maximum(tags[:, None, 1], apart[None, :, 1]), 0, None)).sum(1)
            best = int(np.argmin(covered))  # the first spot that covers nothing, if there is one
            if covered[best] == 0 or where is _nearby_spots:
                choice = (text, tuple(float(v) for v in tags[best]))
                break
        if choice is not None:  # None: a box with neither label nor key
            placed = np.vstack([placed, choice[1]])
        result.append(choice)
    return result


def draw_labelled(image: Image.Image | np.ndarray, boxes: Sequence[LabelledBox], width: int | None = None,
                  text_scale: float = 1.0) -> Image.Image:
    """Draw ``boxes``, the first on top: outlines in their colours with a thin black halo, then one tag per
    box (:func:`layout_tags`; filled with the box's colour, text in black or white, whichever reads better).
    Line width and text size follow the image size (``width`` overrides the line width; ``text_scale``
    enlarges the text for a picture shown smaller than a third of a screen)."""
    canvas = Image.fromarray(_rgb(image).copy())
    draw = ImageDraw.Draw(canvas)
    font = _font(round(label_size(*canvas.size) * text_scale))
    width = width or max(2, round(max(canvas.size) / 160))
    for box in reversed(boxes):
        x, y, w, h = (float(v) for v in box.bbox)
        x1, y1 = x + max(w - 1, 0), y + max(h - 1, 0)
        draw.rectangle([x - 1, y - 1, x1 + 1, y1 + 1], outline=HALO, width=width + 2)
        draw.rectangle([x, y, x1, y1], outline=box.color, width=width)

    def measure(text: str) -> tuple[float, float]:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, round((bottom - top) / 6))
        return right - left + 2 * pad, bottom - top + 2 * pad

    for box, (text, tag) in ((b, t) for b, t in zip(boxes, layout_tags(boxes, canvas.size, measure)) if t):
        left, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, round((bottom - top) / 6))
        draw.rectangle(tag, fill=box.color, outline=HALO)
        draw.text((tag[0] + pad - left, tag[1] + pad - top), text, fill=text_color(box.color), font=font)
    return canvas


def draw_boxes(image: Image.Image | np.ndarray, detections: Sequence[dict], names: Mapping[int, str] | None = None,
               color: tuple[int, int, int] | None = None, width: int | None = None,
               colors: Mapping[int, tuple[int, int, int]] | None = None) -> Image.Image:
    """Draw COCO ``detections`` or annotations (``bbox`` [x, y, w, h], ``category_id``, optional ``score``).

    Detections go best score first, keyed by rank (``1``, ``2``, …) and labelled ``"1 dog 0.86"``;
    annotations (no score) keyed ``GT1``, ``GT2``, … in the order given and labelled ``"GT1 dog"``. A
    label that finds no free place shows its key alone (see :func:`draw_labelled`). Colours: ``color``
    for every box, else ``colors[category_id]``, else :func:`distinct_colors` over the categories in
    the order they first appear.
    """
    ranked = sorted(detections, key=lambda d: -d["score"] if d.get("score") is not None else 0.0)
    categories = list(dict.fromkeys(d.get("category_id", 0) for d in ranked))
    palette = colors or dict(zip(categories, distinct_colors(len(categories))))
    boxes = []
    for rank, det in enumerate(ranked, 1):
        category = det.get("category_id", 0)
        scored = det.get("score") is not None
        key = str(rank) if scored else f"GT{rank}"
        words = [key, str((names or {}).get(category, category)), *([format_score(det["score"])] if scored else [])]
        boxes.append(LabelledBox(tuple(det["bbox"]), color or palette[category], " ".join(words), key))
    return draw_labelled(image, boxes, width)


def colorbar(colormap: str = "jet", width: int = 320) -> Image.Image:
    """The key to a heatmap's colours: ``colormap`` from 0 (left) to 1 (right) with ticks at 0, 0.25, …, 1
    — the normalised map, 0 at its minimum and 1 at its maximum."""
    strip_h, font = 14, _font(12)
    margin = 12
    ramp = colorize(np.tile(np.linspace(0.0, 1.0, width - 2 * margin, dtype=np.float32), (strip_h, 1)), colormap)
    bar = Image.new("RGB", (width, strip_h + 22), (255, 255, 255))
    bar.paste(Image.fromarray(ramp), (margin, 0))
    draw = ImageDraw.Draw(bar)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = margin + value * (width - 2 * margin - 1)
        draw.line([(x, strip_h), (x, strip_h + 3)], fill=(0, 0, 0))
        text = format_score(value)
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((x - (right - left) / 2, strip_h + 5), text, fill=(0, 0, 0), font=font)
    return bar


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


def multiclass_overlay(image: Image.Image | np.ndarray, heats: np.ndarray,
                       colors: Sequence[tuple[int, int, int]] | None = None, alpha: float = 0.6,
                       floor: float = 0.2) -> Image.Image:
    """One colour per class: each pixel takes the colour of its hottest class, blended by that heat.

    ``heats (K, H, W)`` in [0, 1], one map per entry of ``colors`` (default :func:`distinct_colors`,
    in the order of the maps); pixels whose hottest heat is below ``floor`` stay as they are.
    """
    rgb = _rgb(image).astype(np.float32)
    heats = np.stack([_fit(h, *rgb.shape[:2]) for h in np.asarray(heats)])
    winner = heats.argmax(0)
    strength = heats.max(0)
    palette = np.array(colors if colors is not None else distinct_colors(len(heats)), dtype=np.float32)
    weight = (alpha * np.clip((strength - floor) / max(1e-6, 1 - floor), 0, 1))[..., None]
    blended = rgb * (1 - weight) + palette[winner] * weight
    return Image.fromarray(blended.round().astype(np.uint8))
