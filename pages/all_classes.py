"""All classes: the top-k CAM grid and a multi-class colour overlay, from one forward pass."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from camloc.viz import cam_grid, class_hex, format_score, multiclass_overlay
from pages.analysis import analyze, ranked_classes
from pages.inputs import choose_images, decode, demo_hint, pick_image
from pages.model_picker import pick_model
from pages.state import carry, options_filter
from pages.tables import significant, with_swatches

st.title("All classes at once")
picked = pick_model()
images = choose_images()
if picked is None or not images:
    st.stop()
model_key, model, meta = picked
item = pick_image(images)
image = decode(item)
if image is None:
    st.stop()
try:
    analysis = analyze(item, model_key, model, meta)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
names = meta["class_names"]
category_ids = meta.get("category_ids", list(range(len(names))))
probs = analysis.probs.numpy()
ranked = ranked_classes(probs, meta)
demo_hint(model_key, meta, item)
k = st.sidebar.slider("Classes shown (top-k)", 1, min(16, len(ranked)), min(8, len(ranked)), key="grid_k")
columns = st.sidebar.slider("Grid columns", 1, 6, 4, key="grid_columns")
alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="grid_alpha")
top = ranked[:k]
heats = analysis.heatmaps(top).numpy()

st.subheader(f"Top-{k} class activation maps")
st.image(cam_grid(image, list(heats), [f"{names[c]} {format_score(probs[c])}" for c in top], columns=columns,
                  alpha=alpha), caption="Each tile: the CAM of one class, titled with its probability")

st.subheader("Multi-class overlay")
floor = st.slider("Hide heat below", 0.0, 0.9, 0.3, 0.05, key="overlay_floor")
options = [names[c] for c in ranked]
carry("overlay_classes", options[:4], options_filter(options), context=(model_key, item.digest))
chosen = st.multiselect("Classes", options, key="overlay_classes")
indices = [names.index(n) for n in chosen]
if indices:
    ids = [category_ids[i] for i in indices]
    st.image(multiclass_overlay(image, analysis.heatmaps(indices).numpy(), ids, alpha=0.65, floor=floor),
             caption="Each pixel takes the colour of its hottest class")
    legend = pd.DataFrame({"class": chosen, "probability": [significant(probs[i]) for i in indices]})
    st.dataframe(with_swatches(legend, [class_hex(c) for c in ids]), hide_index=True, key="overlay_legend")
else:
    st.info("Pick at least one class for the overlay.")
