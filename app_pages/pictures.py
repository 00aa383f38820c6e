"""The pictures the image pages share — a class's heatmap, and its boxes over it with the ground truth —
cached per setting, and the sidebar controls that say how many boxes a picture draws.

A picture draws what a person can read: at most the ``most`` best boxes, and none scoring below
``floor`` × the best box's score (the detections file and ``python -m eval`` keep every box). Its
caption says how many are hidden. Detections are tagged by rank (``1`` = best, as in the table
beside the picture), ground truth ``GT1``, ``GT2``, … (white).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from app_pages.analysis import Maps
from app_pages.state import carry
from camloc.viz import GROUND_TRUTH_COLOR, LabelledBox, distinct_colors, draw_labelled, format_score, overlay_heatmap

MOST_BOXES = 5
SCORE_FLOOR = 0.1
#: Text of a Compare tile's tags, relative to a picture shown a third of the page wide.
TILE_TEXT = 1.5


@dataclass(frozen=True)
class BoxDisplay:
    """Which boxes a picture draws: at most ``most``, none scoring below ``floor`` × the best score."""

    most: int = MOST_BOXES
    floor: float = SCORE_FLOOR

    def drawn(self, detections: Sequence[dict[str, Any]]) -> int:
        """How many of ``detections`` (best score first) are drawn: always the first ones."""
        if not detections:
            return 0
        cut = self.floor * detections[0]["score"]
        return min(self.most, sum(d["score"] >= cut for d in detections))

    def caption(self, detections: Sequence[dict[str, Any]], short: bool = False) -> str:
        """``"5 of 16 boxes drawn (11 hidden: …)"`` (``short``: without the why), or ``"2 boxes"`` when all
        are drawn."""
        total, drawn = len(detections), self.drawn(detections)
        if drawn == total:
            return f"{total} box{'es' if total != 1 else ''}"
        return f"{drawn} of {total} boxes drawn" + ("" if short else f" ({total - drawn} hidden: {self.rule})")

    @property
    def rule(self) -> str:
        return f"at most {self.most}, none below {format_score(self.floor)} × the best score"


def pick_box_display(where=st.sidebar) -> BoxDisplay:
    """The sidebar's "Boxes drawn" controls (shared by the pages, on by default)."""
    carry("most_boxes", MOST_BOXES)
    most = where.slider("Boxes drawn, at most", 1, 50, key="most_boxes",
                        help="The best boxes only; the tables and the detections JSON list them all")
    carry("box_floor", SCORE_FLOOR)
    floor = where.slider("…scoring at least (× the best box's score)", 0.0, 1.0, step=0.05, key="box_floor",
                         help="0 draws every box up to the number above")
    return BoxDisplay(most, floor)


def detection_color() -> tuple[int, int, int]:
    """The colour of a one-class picture's detections (the first of :func:`camloc.viz.distinct_colors`)."""
    return distinct_colors(1)[0]


@st.cache_data(max_entries=64, show_spinner=False)
def class_map(key: tuple, k: int, _maps: Maps) -> np.ndarray:
    """Class ``k``'s normalised map of ``_maps`` at image size (cached: opacity and colormap reuse it)."""
    return _maps.analysis.heatmaps([k])[0].numpy()


@st.cache_data(max_entries=64, show_spinner=False)
def heat_picture(key: tuple, k: int, alpha: float, colormap: str, _image: Image.Image, _maps: Maps) -> Image.Image:
    """Class ``k``'s normalised map of ``_maps`` over the image (cached per setting)."""
    return overlay_heatmap(_image, class_map(key, k, _maps), alpha, colormap)


@st.cache_data(max_entries=64, show_spinner=False)
def boxes_picture(key: tuple, k: int, alpha: float, colormap: str, boxes: tuple[tuple[float, ...], ...],
                  truth: tuple[tuple[float, ...], ...], text_scale: float, _image: Image.Image,
                  _maps: Maps) -> Image.Image:
    """The heat picture with the ground-truth boxes (white, ``GT1``…) and ``boxes`` (``(x, y, w, h,
    score)``, best first, tagged by rank), every box tagged (cached per setting)."""
    return draw_labelled(heat_picture(key, k, alpha, colormap, _image, _maps), tagged_boxes(boxes, truth),
                         text_scale=text_scale)


def tagged_boxes(boxes: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> list[LabelledBox]:
    """The ground truth (white, ``GT1``…) and ``boxes`` (``(x, y, w, h, score)``, best first, tagged by rank)."""
    tagged = [LabelledBox(tuple(b), GROUND_TRUTH_COLOR, f"GT{i}", f"GT{i}") for i, b in enumerate(truth, 1)]
    return tagged + [LabelledBox(tuple(b[:4]), detection_color(), f"{rank} {format_score(b[4])}", str(rank))
                     for rank, b in enumerate(boxes, 1)]


def scene(maps: Maps, k: int, image: Image.Image, detections: Sequence[dict[str, Any]], display: BoxDisplay,
          truth: Sequence[Sequence[float]] | None, alpha: float, colormap: str, tile: bool = False) -> Image.Image:
    """The boxes picture of class ``k``: the boxes ``display`` draws, and the ground truth, over the map;
    a ``tile`` (a quarter of the page wide) gets larger text."""
    boxes = tuple((*d["bbox"], d["score"]) for d in detections[:display.drawn(detections)])
    return boxes_picture(maps.key, k, alpha, colormap, boxes, tuple(tuple(b) for b in truth or ()),
                         TILE_TEXT if tile else 1.0, image, maps)


def encoded(picture: Image.Image) -> bytes:
    """A picture with tags encoded for the page: JPEG at quality 95 without chroma subsampling, so that
    coloured tags and their text stay sharp (Streamlit's own JPEG halves the colour resolution), in 2 ms
    where PNG takes 20–50 ms. Show it with ``output_format="JPEG"`` so Streamlit keeps these bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def png_bytes(picture: Image.Image) -> bytes:
    """``picture`` as PNG (for a download: lossless)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
