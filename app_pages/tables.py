"""Tables for the pages: numbers written like the pictures write them, colour swatches, box tables.

Every number in a table is written with 3 significant digits, the way :func:`camloc.viz.format_score`
writes it on a picture (a table's ``%.3g`` and that function give the same text), so a score reads the
same in a table and on the picture beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from app_pages.geometry import best_match
from camloc.viz import format_score

SWATCH = "colour"
NUMBER_FORMAT = "%.3g"


def show_table(frame: pd.DataFrame, key: str | None = None, where=st, colours: Sequence[str] | None = None,
               **options: Any) -> None:
    """``frame`` without its index, float columns with 3 significant digits, and with ``colours`` (one
    ``#rrggbb`` per row) a first column of colour swatches."""
    if colours is not None:
        where.dataframe(with_swatches(frame, colours), hide_index=True, key=key, **options)
        return
    numbers = {name: st.column_config.NumberColumn(format=NUMBER_FORMAT) for name in frame.columns
               if pd.api.types.is_float_dtype(frame[name])}
    where.dataframe(frame, hide_index=True, key=key, column_config=numbers, **options)


def with_swatches(table: pd.DataFrame, colours: Sequence[str]) -> Styler:
    """``table`` with a first column of colour swatches (``#rrggbb`` per row) instead of colour codes, its
    float columns written by :func:`~camloc.viz.format_score`."""
    frame = table.copy()
    frame.insert(0, SWATCH, [""] * len(frame))
    floats = [name for name in frame.columns if pd.api.types.is_float_dtype(frame[name])]
    return (frame.style.apply(lambda _: [f"background-color: {c}" for c in colours], subset=[SWATCH])
            .format(format_score, subset=floats, na_rep=""))


NO_TRUTH = "—"
BOX_COLUMNS = ["#", "x", "y", "w", "h", "score"]


def boxes_table(detections: Sequence[dict[str, Any]], truth: Sequence[Sequence[float]] | None,
                truth_classes: Sequence[int] | None = None, names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """One row per detection, best score first, numbered as on the picture (``#``): with ``names`` its class,
    its box ``x, y, w, h`` in pixels, its score and, with ground truth, its IoU with the best-matching
    ground-truth box and that box's key (``GT1``, … in the order of ``truth``).

    ``truth_classes`` (one category id per ground-truth box) matches a detection only with the boxes of its
    own class (``category_id``): :data:`NO_TRUTH` where the ground truth has none of its class."""
    rows = []
    for rank, det in enumerate(sorted(detections, key=lambda d: -d["score"]), 1):
        x, y, w, h = (round(float(v)) for v in det["bbox"])
        row: dict[str, Any] = {"#": rank}
        if names is not None:
            row["class"] = names.get(det.get("category_id"), str(det.get("category_id")))
        row.update({"x": x, "y": y, "w": w, "h": h, "score": float(det["score"])})
        if truth:
            keys = [i for i in range(len(truth))
                    if truth_classes is None or truth_classes[i] == det.get("category_id")]
            iou, index = best_match(det["bbox"], [truth[i] for i in keys])
            row.update({"IoU with GT": iou if keys else None, "best GT": f"GT{keys[index] + 1}" if keys else NO_TRUTH})
        rows.append(row)
    columns = BOX_COLUMNS[:1] + (["class"] if names is not None else []) + BOX_COLUMNS[1:]
    return pd.DataFrame(rows, columns=None if rows else columns)
