"""Table helpers for the pages (no Streamlit here): numbers to 3 significant digits, colour swatches."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from pandas.io.formats.style import Styler

SWATCH = "colour"


def significant(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (``0.052349`` → ``0.0523``)."""
    return float(f"{float(value):.{digits}g}")


def with_swatches(table: pd.DataFrame, colours: Sequence[str]) -> Styler:
    """``table`` with a first column of colour swatches (``#rrggbb`` per row) instead of colour codes."""
    frame = table.copy()
    frame.insert(0, SWATCH, [""] * len(frame))
    return frame.style.apply(lambda _: [f"background-color: {c}" for c in colours], subset=[SWATCH])
