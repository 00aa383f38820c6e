"""Explore: one image, any of the classes, any box recipe, live thresholds and boxes."""

from __future__ import annotations

import io
import json

import pandas as pd
import streamlit as st

from camloc.viz import COLORMAPS, format_score, overlay_heatmap
from pages.analysis import METHODS, analyze, localizer_for, pick_class, pick_recipe, ranked_classes
from pages.geometry import best_iou
from pages.inputs import annotations_input, choose_images, decode, demo_hint, ground_truth, pick_image
from pages.model_picker import pick_model
from pages.pictures import boxes_picture
from pages.state import carry, options_filter
from pages.tables import significant


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


st.title("Explore class activation maps")
side = st.sidebar
picked = pick_model()
images = choose_images()
gt_data = annotations_input(st.sidebar.expander("Ground truth"))
if picked is None or not images:
    if picked is not None:
        st.info("Upload an image (or restore the bundled examples) to start.")
    st.stop()
model_key, model, meta = picked
names = meta["class_names"]
item = pick_image(images)
image = decode(item)
if image is None:
    st.stop()

carry("method", next(iter(METHODS)), options_filter(METHODS))
method_label = side.radio("Method", list(METHODS), horizontal=True, key="method")
method, tta = METHODS[method_label]
try:
    ranking = analyze(item, model_key, model, meta, "cam", tta)  # all classes' probabilities (and CAMs)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
probs = ranking.probs.numpy()
ranked = ranked_classes(probs, meta)
k = pick_class(ranked, meta, (model_key, item.digest))
class_name = names[k]
recipe, options = pick_recipe()
analysis = analyze(item, model_key, model, meta, method, tta, recipe, focus=k)
carry("alpha", 0.5)
alpha = side.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
carry("colormap", "jet", options_filter(COLORMAPS))
colormap = side.selectbox("Colormap", sorted(COLORMAPS), key="colormap")

localizer = localizer_for(model, meta, method, tta)
heat = analysis.heatmaps([k])[0].numpy()
detections = localizer.detections(analysis, classes=[k], recipe=recipe, **options)
category_id = localizer.category_ids[k]
overlay = overlay_heatmap(image, heat, alpha, colormap)
truth = ground_truth(gt_data, item.name, class_name)
boxed = boxes_picture(overlay, detections, truth, category_id, class_name)

top_k = st.slider("Top-k classes", 1, min(20, len(ranked)), min(5, len(ranked)), key="top_k")
st.dataframe(pd.DataFrame({"class": [names[c] for c in ranked[:top_k]],
                           "probability": [significant(probs[c]) for c in ranked[:top_k]]}),
             hide_index=True, key="topk_table")
cols = st.columns(3)
cols[0].image(image, caption=f"{item.name} ({image.width}×{image.height})")
demo_hint(model_key, meta, item, cols[0])
mirrored = " with its mirror image" if analysis.mirrored and not tta else ""
cols[1].image(overlay, caption=f"{method_label}{mirrored} of “{class_name}” (p = {format_score(analysis.probs[k])})")
setting = ", ".join(f"{key} {value}" for key, value in options.items())
cols[2].image(boxed, caption=f"{len(detections)} box(es), recipe {recipe}" + (f": {setting}" if setting else ""))

rows = [{"box": [round(v) for v in d["bbox"]], "score": significant(d["score"]),
         **({"IoU with GT": round(best_iou(d["bbox"], truth), 3)} if truth is not None else {})} for d in detections]
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="boxes_table")
else:
    st.caption(f"No box for “{class_name}” with recipe {recipe}.")
if truth is not None:
    st.caption(f"Ground truth: {len(truth)} “{class_name}” object(s) in {item.name} (white boxes).")

down = st.columns(2)
down[0].download_button("Overlay PNG", png_bytes(boxed), file_name=f"{item.name.rsplit('.', 1)[0]}_{class_name}.png",
                        mime="image/png")
down[1].download_button("Detections JSON", json.dumps(detections, indent=1), file_name="detections.json",
                        mime="application/json")
