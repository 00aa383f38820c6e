"""Training runs: the per-epoch curves of a `python -m train` run, its settings and its best epoch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app_pages.model_picker import checkpoint_folder
from app_pages.run_log import Run, RunLogError, find_runs, read_run
from app_pages.state import carry, options_filter
from app_pages.tables import show_table
from camloc.demo import DEMO_RUN
from camloc.demo import RECIPE as DEMO_DATA
from camloc.demo import TRAIN_ARGS as DEMO_TRAIN_ARGS

CURVES = (  # (subplot, log key, label)
    (1, "train_loss", "training loss"),
    (2, "val_map", "validation mAP (classification)"),
    (2, "val_loc_ap50", "localisation AP50 (CAM boxes)"),
    (3, "lr", "learning rate"),
)


def demo_settings() -> dict[str, str]:
    """The demo model's training settings, as camloc.demo trains it (its checkpoint keeps no settings)."""
    pairs = dict(zip(DEMO_TRAIN_ARGS[::2], DEMO_TRAIN_ARGS[1::2]))
    data = (f"synthetic shapes: {DEMO_DATA['train']} training and {DEMO_DATA['val']} validation images, "
            f"{DEMO_DATA['classes']} classes, {DEMO_DATA['size']} px, seed {DEMO_DATA['seed']}")
    return {"data": data, **{name.removeprefix("--"): value for name, value in pairs.items()}}


def curves(run: Run) -> go.Figure:
    """Loss, validation scores and learning rate per epoch, with the best epoch marked."""
    figure = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "validation", "learning rate"))
    for col, key, label in CURVES:
        epochs, values = run.series(key)
        if epochs:
            figure.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=label), row=1, col=col)
    best = run.best()
    if best is not None:
        figure.add_vline(x=best["epoch"], line_dash="dot", line_color="grey")
    figure.update_xaxes(title_text="epoch", dtick=max(1, len(run.epochs) // 10))
    figure.update_yaxes(exponentformat="power", row=1, col=3)
    figure.update_layout(height=380, legend={"orientation": "h", "y": -0.25}, hovermode="x unified")
    return figure


st.title("Training runs")
side = st.sidebar
carry("runs_folder", str(checkpoint_folder()))
root = Path(side.text_input("Runs folder", key="runs_folder",
                            help="Run folders (with a log.jsonl) below this folder are listed; the image pages' "
                                 "checkpoint folder and model stay as they are"))
runs = find_runs(root)
labels = [str(p.relative_to(root)) if p != root else "." for p in runs]
if labels:
    carry("run", labels[-1], options_filter(labels))
    label = side.selectbox("Run", labels, key="run")
carry("run_path", "")
typed = side.text_input("…or a run folder", key="run_path", help="The --out folder of `python -m train`")
if typed.strip():
    folder = Path(typed.strip())
elif labels:
    folder = runs[labels.index(label)]
else:
    folder = DEMO_RUN
    st.info(f"Showing the **demo**: a training run of the bundled demo model's recipe, from scratch on synthetic "
            "shapes (a re-run of the same data, settings and seed; the bundled weights came from this recipe). No "
            f"training run under {root}: train one with `python -m train ... --out runs/NAME` and choose its folder "
            "in the sidebar.")

try:
    run = read_run(folder)
except RunLogError as exc:
    st.error(str(exc))
    st.stop()
if folder == DEMO_RUN:
    run = replace(run, settings=demo_settings())

best = run.best()
last = run.epochs[-1]
stats = st.columns(4)
stats[0].metric("epochs", last["epoch"])
stats[1].metric("best epoch", best["epoch"] if best else "—", help="highest validation mAP: the epoch best.pt holds")
stats[2].metric("best validation mAP", f"{best['val_map']:.3f}" if best else "—")
loc = best.get("val_loc_ap50") if best else None
stats[3].metric("its localisation AP50", f"{loc:.3f}" if isinstance(loc, (int, float)) else "—")
if best is None:
    st.caption("This run has no validation scores (no --val-images): best.pt is the last epoch.")
st.plotly_chart(curves(run), key="run_chart")

st.subheader("Per epoch")
show_table(pd.DataFrame(run.epochs), key="run_table")
st.subheader("Settings")
if run.settings:
    show_table(pd.DataFrame({"setting": list(run.settings), "value": list(run.settings.values())}),
               key="run_settings", height="content")
else:
    st.caption(f"No readable last.pt / best.pt in {folder}: the run's settings are unknown.")
