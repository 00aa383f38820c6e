"""All classes: the top-k CAM grid and a multi-class colour overlay, from one forward pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from camloc.viz import cam_grid, class_color, multiclass_overlay
from pages.common import analyze_bytes, choose_images, decode, localizer_for, pick_model

st.title("All classes at once")
picked = pick_model()
images = choose_images(st.sidebar)
if picked is None or not images:
    st.stop()
model_key, model, meta = picked
name, data = images[0]
image = decode(name, data)
if image is None:
    st.stop()
try:
    analysis = analyze_bytes(data, model_key, "cam", False, None, localizer_for(model, meta, "cam", False))
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {name}: {exc}")
    st.stop()
names = meta["class_names"]
unsupported = set(meta.get("unsupported_classes", ()))
probs = analysis.probs.numpy()
ranked = [int(k) for k in np.argsort(-probs) if names[int(k)] not in unsupported]
k = st.sidebar.slider("Classes shown (top-k)", 1, min(16, len(ranked)), min(8, len(ranked)), key="grid_k")
columns = st.sidebar.slider("Grid columns", 1, 6, 4, key="grid_columns")
alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="grid_alpha")
top = ranked[:k]
heats = analysis.heatmaps(top).numpy()

st.subheader(f"Top-{k} class activation maps")
st.image(cam_grid(image, list(heats), [f"{names[c]} {probs[c]:.2f}" for c in top], columns=columns, alpha=alpha),
         caption="Each tile: the CAM of one class, titled with its probability")

st.subheader("Multi-class overlay")
floor = st.slider("Hide heat below", 0.0, 0.9, 0.3, 0.05, key="overlay_floor")
chosen = st.multiselect("Classes", [names[c] for c in ranked], default=[names[c] for c in top[:4]],
                        key="overlay_classes")
indices = [names.index(n) for n in chosen]
if indices:
    st.image(multiclass_overlay(image, analysis.heatmaps(indices).numpy(), indices, alpha=0.65, floor=floor),
             caption="Each pixel takes the colour of its hottest class")
    legend = pd.DataFrame({"class": chosen, "probability": [round(float(probs[i]), 4) for i in indices],
                           "colour": ["#{:02x}{:02x}{:02x}".format(*class_color(i)) for i in indices]})
    st.dataframe(legend, hide_index=True, key="overlay_legend")
else:
    st.info("Pick at least one class for the overlay.")
