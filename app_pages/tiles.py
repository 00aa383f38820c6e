"""Compare's tiles: a grid of placeholders drawn before anything is computed (so the previous photo's pictures
go at once), each filled when its maps are ready, its caption, and the tables of the tiles' boxes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image

from app_pages.analysis import Maps
from app_pages.geometry import best_iou
from app_pages.pictures import BoxDisplay, encoded, scene
from app_pages.tables import boxes_table, show_table
from camloc.viz import format_score

#: Tiles per row: a quarter of the page each, so that tags and captions stay readable.
PER_ROW = 4
NOT_IN_TRUTH = "not in the ground truth"
FOUND = "objects found (IoU ≥ 0.5)"


def scored(detections: Sequence[dict[str, Any]], truth: Sequence[Sequence[float]] | None) -> dict[str, Any]:
    """A table row: how many boxes, the top score and, when the class is in the image's ground truth, how
    well the boxes match it."""
    row: dict[str, Any] = {"boxes": len(detections), "top score": detections[0]["score"] if detections else None}
    if truth:
        row["IoU of top box"] = best_iou(detections[0]["bbox"], truth) if detections else 0.0
        found = sum(best_iou(g, [d["bbox"] for d in detections]) >= 0.5 for g in truth)
        row[FOUND] = f"{found}/{len(truth)}"
    return row


@dataclass(frozen=True)
class Scene:
    """What every tile of the page shares: the image, the class, its ground truth and how pictures are drawn."""

    image: Image.Image
    k: int
    truth: list[list[float]] | None
    display: BoxDisplay
    alpha: float
    colormap: str
    shown_views: str  # the views of the heading's probability

    def caption(self, label: str, maps: Maps, detections: Sequence[dict[str, Any]]) -> str:
        """A tile's caption: what it is, its probability where its views differ from the heading's, its boxes
        and how they match the ground truth."""
        text = f"{label}: {self.display.caption(detections, short=True)}"
        if maps.views != self.shown_views:
            text += f"; p = {format_score(maps.probs[self.k])} ({maps.views})"
        if self.truth:
            row = scored(detections, self.truth)
            text += f"; top box IoU {format_score(row['IoU of top box'])}, found {row[FOUND]}"
        elif self.truth is not None:
            text += f"; {NOT_IN_TRUTH}"
        return text

    def fill(self, tile: Any, label: str, maps: Maps, detections: Sequence[dict[str, Any]]) -> None:
        """Draw the tile: the boxes ``display`` draws over the class's map, with its caption."""
        picture = scene(maps, self.k, self.image, detections, self.display, self.truth, self.alpha, self.colormap,
                        tile=True)
        tile.image(encoded(picture), output_format="JPEG", width="stretch",
                   caption=self.caption(label, maps, detections))


@dataclass
class TileGrid:
    """Placeholders in rows of :data:`PER_ROW`, one per tile, drawn at once, and under them the table of the
    boxes each tile draws (column ``what``: the tile's label), rewritten as tiles are filled (without a key:
    a table drawn several times in one run)."""

    count: int
    what: str
    tiles: list[Any] = field(init=False)
    table: Any = field(init=False)
    rows: dict[str, pd.DataFrame] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.tiles = [column.empty() for start in range(0, self.count, PER_ROW)
                      for column in st.columns(PER_ROW)[:min(PER_ROW, self.count - start)]]
        self.table = st.empty()

    def add_boxes(self, label: str, detections: Sequence[dict[str, Any]], scene_: Scene) -> None:
        """List the boxes the tile ``label`` draws (its best ones, numbered as on its picture)."""
        drawn = detections[:scene_.display.drawn(detections)]
        frame = boxes_table(drawn, scene_.truth)
        frame.insert(0, self.what, label)
        self.rows[label] = frame
        shown = pd.concat([f for f in self.rows.values() if len(f)], ignore_index=True) if any(
            len(f) for f in self.rows.values()) else None
        if shown is None:
            self.table.caption("No tile draws a box.")
        else:
            show_table(shown, where=self.table)
