"""Compare: one image, one class — every CAM method and every box recipe side by side, with IoU against
the ground truth when the image is annotated (the comparison the course makes by hand)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image

from camloc.localize import Analysis, Localizer
from camloc.models import CamModel
from camloc.recipes import RECIPES
from camloc.viz import COLORMAPS, format_score, overlay_heatmap
from pages.analysis import METHODS, analyze, localizer_for, pick_class, pick_recipe, ranked_classes
from pages.geometry import best_iou
from pages.inputs import InputImage, annotations_input, choose_images, decode, demo_hint, ground_truth, pick_image
from pages.model_picker import pick_model
from pages.pictures import boxes_picture
from pages.state import carry, options_filter
from pages.tables import significant

PER_ROW = 4


def scored(detections: list[dict[str, Any]], truth: list[list[float]] | None) -> dict[str, Any]:
    """A table row: how many boxes, the top score and, with ground truth, how well the boxes match it."""
    top = max(detections, key=lambda d: d["score"], default=None)
    row: dict[str, Any] = {"boxes": len(detections), "top score": significant(top["score"]) if top else None}
    if truth is not None:
        row["IoU of top box"] = round(best_iou(top["bbox"], truth), 3) if top else 0.0
        found = sum(best_iou(g, [d["bbox"] for d in detections]) >= 0.5 for g in truth)
        row["objects found (IoU ≥ 0.5)"] = f"{found}/{len(truth)}"
    return row


def method_analyses(item: InputImage, model_key: str, model: CamModel, meta: dict[str, Any],
                    recipe: str, focus: int) -> dict[str, Analysis]:
    """Each method's analysis of the image, with the views ``recipe`` needs (all cached); a costly method
    computes the ``focus`` class only."""
    return {label: analyze(item, model_key, model, meta, method, tta, recipe, focus)
            for label, (method, tta) in METHODS.items()}


def overlay(image: Image.Image, analysis: Analysis, k: int, alpha: float, colormap: str) -> Image.Image:
    """Class ``k``'s map of ``analysis`` over the image."""
    return overlay_heatmap(image, analysis.heatmaps([k])[0].numpy(), alpha, colormap)


def caption(label: str, detections: list[dict[str, Any]], truth: list[list[float]] | None) -> str:
    row = scored(detections, truth)
    text = f"{label}: {row['boxes']} box(es)"
    if truth is not None:
        text += f", top box IoU {row['IoU of top box']:.2f}, found {row['objects found (IoU ≥ 0.5)']}"
    return text


st.title("Compare methods and box recipes")
side = st.sidebar
picked = pick_model()
images = choose_images()
gt_data = annotations_input(st.sidebar.expander("Ground truth"))
if picked is None or not images:
    st.stop()
model_key, model, meta = picked
names = meta["class_names"]
item = pick_image(images)
image = decode(item)
if image is None:
    st.stop()
try:
    ranking = analyze(item, model_key, model, meta)
    k = pick_class(ranked_classes(ranking.probs.numpy(), meta), meta, (model_key, item.digest))
    recipe, options = pick_recipe()
    recipes = list(RECIPES)
    by_recipe = {name: method_analyses(item, model_key, model, meta, name, k) for name in recipes}
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
analyses = by_recipe[recipe]
carry("alpha", 0.5)
alpha = side.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
carry("colormap", "jet", options_filter(COLORMAPS))
colormap = side.selectbox("Colormap", sorted(COLORMAPS), key="colormap")

class_name = names[k]
localizer: Localizer = localizer_for(model, meta)
category_id = localizer.category_ids[k]
truth = ground_truth(gt_data, item.name, class_name)

demo_hint(model_key, meta, item)
st.caption(f"“{class_name}” in {item.name} (p = {format_score(ranking.probs[k])})"
           + (f"; white boxes: its {len(truth)} ground-truth object(s)" if truth is not None else
              "; no ground truth for this image and class"))

st.subheader("Methods")
setting = ", ".join(f"{key} {value}" for key, value in options.items())
st.caption(f"Boxes: recipe {recipe}" + (f" ({setting})" if setting else "") + " on each method's map.")
for column, (label, analysis) in zip(st.columns(len(analyses)), analyses.items()):
    found = localizer.detections(analysis, classes=[k], recipe=recipe, **options)
    column.image(boxes_picture(overlay(image, analysis, k, alpha, colormap), found, truth, category_id, class_name),
                 caption=caption(label, found, truth))

st.subheader("Box recipes")
carry("compare_maps", next(iter(METHODS)), options_filter(METHODS))
source = st.radio("Maps from", list(METHODS), horizontal=True, key="compare_maps")
st.caption("Each recipe with its default options.")
for start in range(0, len(recipes), PER_ROW):
    for column, name in zip(st.columns(PER_ROW), recipes[start:start + PER_ROW]):
        found = localizer.detections(by_recipe[name][source], classes=[k], recipe=name)
        column.image(boxes_picture(overlay(image, by_recipe[name][source], k, alpha, colormap), found, truth,
                                   category_id, class_name),
                     caption=caption(name, found, truth))

st.subheader("Every method × recipe")
st.caption("Each recipe with its default options.")
rows = [{"method": label, "recipe": name,
         **scored(localizer.detections(by_recipe[name][label], classes=[k], recipe=name), truth)}
        for label in METHODS for name in recipes]
st.dataframe(pd.DataFrame(rows), hide_index=True, height="content", key="compare_table")
