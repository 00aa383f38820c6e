"""Explore: one image, any of the classes, any box recipe, live thresholds and boxes."""

from __future__ import annotations

import functools
import json

import pandas as pd
import streamlit as st

from app_pages.analysis import align_toggle, analyze
from app_pages.inputs import demo_hint, describe, ground_truth
from app_pages.methods import CAM, recipe_views
from app_pages.pickers import describe_options, pick_class, pick_method, pick_recipe, ranked_classes
from app_pages.pictures import encoded, heat_picture, pick_box_display, png_bytes, scene
from app_pages.state import carry, options_filter
from app_pages.subject import pick_subject
from app_pages.tables import boxes_table, show_table
from app_pages.words import truth_caption
from camloc.viz import COLORMAPS, colorbar, format_score


@st.fragment
def top_classes(names: list[str], ranked: list[int], probs, views: str) -> None:
    """The top-k table (a fragment: its slider reruns only this table)."""
    most = min(20, len(ranked))
    carry("top_k", min(5, most), lambda value: 1 <= value <= most)
    top_k = st.slider("Top-k classes", 1, most, key="top_k")
    show_table(pd.DataFrame({"class": [names[c] for c in ranked[:top_k]],
                             "probability": [float(probs[c]) for c in ranked[:top_k]]}), key="topk_table")
    st.caption(f"Probabilities of {views}, as the boxes use them.")


st.title("Explore class activation maps")
side = st.sidebar
model_key, model, meta, gt_data, item, decoded, class_slot = pick_subject("explore")
names = meta["class_names"]
image = decoded.image
status = st.empty()  # a long computation's progress bar, above the pictures it makes

method_slot = side.container()  # the method picker needs the recipe, which comes below it
align_toggle(side)
recipe, options = pick_recipe()
try:  # every class's probability and CAM, over the views the recipe averages: one figure per page
    ranking = analyze(item, model_key, model, meta, recipe=recipe, where=status)
    probs = ranking.probs
    ranked = ranked_classes(probs, meta)
    k = pick_class(ranked, meta, (model_key, item.digest), where=class_slot)
    method, one_view = pick_method(recipe, where=method_slot)
    maps = ranking if method == CAM else analyze(item, model_key, model, meta, method, recipe, focus=k,
                                                  one_view=one_view, where=status)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
class_name = names[k]
display = pick_box_display()
carry("alpha", 0.5)
alpha = side.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
carry("colormap", "jet", options_filter(COLORMAPS))
colormap = side.selectbox("Colormap", sorted(COLORMAPS), key="colormap")

detections = maps.detections(k, recipe, options)
truth = ground_truth(gt_data, item.name, class_name)
heat = heat_picture(maps.key, k, alpha, colormap, image, maps)
boxed = scene(maps, k, image, detections, display, truth, alpha, colormap)

cols = st.columns(3)
cols[0].image(image, caption=describe(item, decoded), width="stretch")
demo_hint(model_key, meta, item, cols[0])
p_shown = "" if method.registered.class_agnostic else f" (p = {format_score(probs[k])})"
views = f", over {maps.views}" if maps.views != ranking.views else ""
cols[1].image(heat, caption=f"{method.map_caption(class_name)}{p_shown}{views}", width="stretch")
cols[1].image(colorbar(colormap), caption="The map, 0 at its minimum and 1 at its maximum")
setting = describe_options(options)
boxes_caption = f"{display.caption(detections)}, recipe {recipe}" + (f": {setting}" if setting else "")
if maps.overrides:
    boxes_caption += f" (on one view: without the recipe's averaging of {recipe_views(recipe)} views)"
cols[2].image(encoded(boxed), caption=boxes_caption, output_format="JPEG", width="stretch")

if detections:
    show_table(boxes_table(detections, truth), key="boxes_table")
else:
    st.caption(f"No box for “{class_name}” with recipe {recipe}.")
if truth is not None:
    st.caption(truth_caption(len(truth), class_name, item.name)
               + ("; “best GT” is the one each box overlaps most." if truth else ": no IoU to show."))
top_classes(names, ranked, probs, ranking.views)

down = st.columns(2)
down[0].download_button("Overlay PNG", functools.partial(png_bytes, boxed),
                        file_name=f"{item.name.rsplit('.', 1)[0]}_{class_name}.png", mime="image/png")
down[1].download_button("Detections JSON (every box)", json.dumps(detections, indent=1), file_name="detections.json",
                        mime="application/json")
