"""Explore: one image, any of the classes, live thresholds and boxes."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import streamlit as st

from camloc.viz import COLORMAPS, draw_boxes, overlay_heatmap
from pages.common import METHODS, analyze_bytes, choose_images, decode, example_annotations, localizer_for, pick_model
from pages.geometry import best_iou


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


st.title("Explore class activation maps")
picked = pick_model()
images = choose_images(st.sidebar)
if picked is None or not images:
    if picked is not None:
        st.info("Upload an image (or restore the bundled examples) to start.")
    st.stop()
model_key, model, meta = picked
names = meta["class_names"]
unsupported = set(meta.get("unsupported_classes", ()))

if len(images) > 1:
    shown = st.selectbox("Image", [name for name, _ in images], key="shown_image")
    name, data = next(item for item in images if item[0] == shown)
else:
    name, data = images[0]
image = decode(name, data)
if image is None:
    st.stop()

side = st.sidebar
method_label = side.radio("Method", list(METHODS), horizontal=True, key="method")
method, tta = METHODS[method_label]
localizer = localizer_for(model, meta, method, tta)

# probabilities first (cached forward pass): they order the class picker
try:
    cam_analysis = analyze_bytes(data, model_key, "cam", tta, None, localizer_for(model, meta, "cam", tta))
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {name}: {exc}")
    st.stop()
probs = cam_analysis.probs.numpy()
ranked = [int(k) for k in np.argsort(-probs) if names[int(k)] not in unsupported]
class_name = side.selectbox("Class", [names[k] for k in ranked], index=0, key="class_name",
                            help="Any class of the model; sorted by probability, the top class first")
k = names.index(class_name)
analysis = cam_analysis if method == "cam" else analyze_bytes(data, model_key, method, tta, (k,), localizer)

mode = side.radio("Threshold", ["Otsu", "Fraction of max"], horizontal=True, key="threshold_mode")
threshold = "otsu" if mode == "Otsu" else side.slider("Fraction", 0.05, 0.95, 0.3, 0.05, key="fraction")
box_mode = side.radio("Boxes", ["all", "largest"], horizontal=True, key="box_mode")
alpha = side.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
colormap = side.selectbox("Colormap", sorted(COLORMAPS), index=sorted(COLORMAPS).index("jet"), key="colormap")

heat = analysis.heatmaps([k])[0].numpy()
detections = localizer.detections(analysis, classes=[k], threshold=threshold, mode=box_mode)
category_id = localizer.category_ids[k]
overlay = overlay_heatmap(image, heat, alpha, colormap)
boxed = draw_boxes(overlay, detections, {category_id: class_name})

top_k = st.slider("Top-k classes", 1, min(20, len(ranked)), min(5, len(ranked)), key="top_k")
st.dataframe(pd.DataFrame({"class": [names[c] for c in ranked[:top_k]],
                           "probability": [round(float(probs[c]), 4) for c in ranked[:top_k]]}),
             hide_index=True, key="topk_table")
cols = st.columns(3)
cols[0].image(image, caption=f"{name} ({image.width}×{image.height})")
cols[1].image(overlay, caption=f"{method_label} of “{class_name}” (p = {probs[k]:.3f})")
cols[2].image(boxed, caption=f"{len(detections)} box(es), threshold {threshold}")

truth = [a for a in example_annotations(name) if a["category_id"] == category_id]
rows = [{"box": [round(v) for v in d["bbox"]], "score": round(d["score"], 4),
         "IoU with GT": round(best_iou(d["bbox"], [g["bbox"] for g in truth]), 3) if truth else None}
        for d in detections]
st.dataframe(pd.DataFrame(rows), hide_index=True, key="boxes_table")
if example_annotations(name):
    st.caption(f"Ground truth of this example: {len(truth)} “{class_name}” object(s).")

down = st.columns(2)
down[0].download_button("Overlay PNG", png_bytes(boxed), file_name=f"{name.rsplit('.', 1)[0]}_{class_name}.png",
                        mime="image/png")
down[1].download_button("Detections JSON", json.dumps(detections, indent=1), file_name="detections.json",
                        mime="application/json")
