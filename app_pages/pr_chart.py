"""The PR curves' figure: one step curve per class, each class in its own colour whatever the IoU, and curves
that coincide drawn in different dash styles (and named in a note), so that no class hides another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from camloc.viz import color_hex, distinct_colors, format_score

#: The dash styles of curves that coincide, in order: the first solid.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
WIDTH = 2.5


@dataclass(frozen=True)
class Curve:
    """One class's curve at the IoU shown: its name, its precision at each recall point, its AP."""

    name: str
    precision: tuple[float, ...]
    ap: float


def class_colours(chosen: Sequence[str]) -> dict[str, str]:
    """``{class: #rrggbb}`` by the order the classes were chosen in (not by their AP, which changes with the
    IoU): a class keeps its colour when the IoU changes, and when another class is added."""
    return dict(zip(chosen, (color_hex(c) for c in distinct_colors(len(chosen)))))


def coinciding(curves: Sequence[Curve]) -> list[list[str]]:
    """The groups of classes whose curves are the same, each in the order given (groups of one left out)."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for curve in curves:
        groups.setdefault(curve.precision, []).append(curve.name)
    return [names for names in groups.values() if len(names) > 1]


def pr_figure(recall: Sequence[float], curves: Sequence[Curve], colours: dict[str, str], iou: str) -> go.Figure:
    """Step curves in ``curves``' order (the legend's); a curve that coincides with earlier ones gets the next
    dash style of :data:`DASHES`."""
    figure = go.Figure()
    seen: dict[tuple[float, ...], int] = {}
    for curve in curves:
        dash = DASHES[seen.get(curve.precision, 0) % len(DASHES)]
        seen[curve.precision] = seen.get(curve.precision, 0) + 1
        figure.add_trace(go.Scatter(x=list(recall), y=list(curve.precision), mode="lines", line_shape="hv",
                                    line={"color": colours[curve.name], "width": WIDTH, "dash": dash},
                                    name=f"{curve.name} (AP={format_score(curve.ap)})", hovertemplate="%{y:.3~g}"))
    figure.update_layout(xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1], yaxis_range=[0, 1.02],
                         legend_title_text=f"IoU {iou}", height=480, hovermode="x unified")
    return figure


def coinciding_note(groups: list[list[str]]) -> str:
    """``"zebra and giraffe share one curve (solid, dashed)."``, one sentence per group (``""`` for none)."""
    names = {"solid": "solid", "dash": "dashed", "dot": "dotted", "dashdot": "dash-dotted", "longdash": "long dashes",
             "longdashdot": "long dash-dots"}
    sentences = []
    for group in groups:
        listed = ", ".join(group[:-1]) + f" and {group[-1]}"
        styles = ", ".join(names[DASHES[i % len(DASHES)]] for i in range(len(group)))
        sentences.append(f"{listed} share one curve ({len(group)} classes: {styles}).")
    return " ".join(sentences)
