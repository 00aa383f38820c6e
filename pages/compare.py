"""Compare: one image, one class — every CAM method and every box recipe side by side, with IoU against
the ground truth when the image is annotated (the comparison the course makes by hand)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from camloc.boxes import RECIPES
from camloc.viz import COLORMAPS, colorbar, format_score
from pages.analysis import METHODS, Maps, analyze, pick_class, pick_recipe, ranked_classes
from pages.geometry import best_iou
from pages.inputs import annotations_input, choose_images, decode, demo_hint, ground_truth, pick_image
from pages.model_picker import pick_model
from pages.pictures import BoxDisplay, encoded, pick_box_display, scene
from pages.state import carry, options_filter
from pages.tables import show_table

PER_ROW = 4
NOT_IN_TRUTH = "not in the ground truth"


def scored(detections: list[dict[str, Any]], truth: list[list[float]] | None) -> dict[str, Any]:
    """A table row: how many boxes, the top score and, when the class is in the image's ground truth, how
    well the boxes match it."""
    row: dict[str, Any] = {"boxes": len(detections), "top score": detections[0]["score"] if detections else None}
    if truth:
        row["IoU of top box"] = best_iou(detections[0]["bbox"], truth) if detections else 0.0
        found = sum(best_iou(g, [d["bbox"] for d in detections]) >= 0.5 for g in truth)
        row["objects found (IoU ≥ 0.5)"] = f"{found}/{len(truth)}"
    return row


def caption(label: str, maps: Maps, shown_views: str, detections: list[dict[str, Any]], display: BoxDisplay,
            truth: list[list[float]] | None, k: int) -> str:
    """A tile's caption: what it is, its probability where its views differ from the heading's, its boxes and
    how they match the ground truth."""
    text = f"{label}: {display.caption(detections, short=True)}"
    if maps.views != shown_views:
        text += f"; p = {format_score(maps.probs[k])} ({maps.views})"
    if truth:
        row = scored(detections, truth)
        text += f"; top box IoU {format_score(row['IoU of top box'])}, found {row['objects found (IoU ≥ 0.5)']}"
    elif truth is not None:
        text += f"; {NOT_IN_TRUTH}"
    return text


@st.fragment
def recipe_tiles(item, model_key: str, model, meta: dict[str, Any], image, k: int, display: BoxDisplay,
                 truth: list[list[float]] | None, alpha: float, colormap: str, shown_views: str) -> None:
    """Every recipe on one method's maps (a fragment: picking the method reruns only these tiles)."""
    carry("compare_maps", next(iter(METHODS)), options_filter(METHODS))
    source = st.radio("Maps from", list(METHODS), horizontal=True, key="compare_maps")
    st.caption("Each recipe with its default options.")
    method, tta = METHODS[source]
    recipes = list(RECIPES)
    for start in range(0, len(recipes), PER_ROW):
        for column, name in zip(st.columns(PER_ROW), recipes[start:start + PER_ROW]):
            maps = analyze(item, model_key, model, meta, method, tta, name, focus=k)
            found = maps.detections(k, name)
            column.image(encoded(scene(maps, k, image, found, display, truth, alpha, colormap, tile=True)),
                         output_format="JPEG",
                         caption=caption(name, maps, shown_views, found, display, truth, k))


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
decoded = decode(item)
if decoded is None:
    st.stop()
image = decoded.image
class_slot = side.container()
recipe, options = pick_recipe()
try:
    ranking = analyze(item, model_key, model, meta, "cam", False, recipe)
    k = pick_class(ranked_classes(ranking.probs, meta), meta, (model_key, item.digest), where=class_slot)
    # a costly method (fused LayerCAM) computes the class shown only
    by_method = {label: analyze(item, model_key, model, meta, method, tta, recipe, focus=k)
                 for label, (method, tta) in METHODS.items()}
    by_pair = {(label, name): analyze(item, model_key, model, meta, method, tta, name, focus=k)
               for label, (method, tta) in METHODS.items() for name in RECIPES}
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
display = pick_box_display()
carry("alpha", 0.5)
alpha = side.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
carry("colormap", "jet", options_filter(COLORMAPS))
colormap = side.selectbox("Colormap", sorted(COLORMAPS), key="colormap")

class_name = names[k]
truth = ground_truth(gt_data, item.name, class_name)
demo_hint(model_key, meta, item)
if truth:
    known = f"white boxes GT1–GT{len(truth)}: its {len(truth)} ground-truth object(s)"
elif truth is not None:
    known = f"“{class_name}” is {NOT_IN_TRUTH} of this image"
else:
    known = "no ground truth for this image and class"
st.caption(f"“{class_name}” in {item.name} (p = {format_score(ranking.probs[k])}, {ranking.views}, as on "
           f"Explore with recipe {recipe}); {known}.")

st.subheader("Methods")
setting = ", ".join(f"{key} {value}" for key, value in options.items())
st.caption(f"Boxes: recipe {recipe}" + (f" ({setting})" if setting else "") + " on each method's map, numbered "
           f"best first; drawn: {display.rule} (sidebar); the table below counts them all.")
for column, (label, maps) in zip(st.columns(len(by_method)), by_method.items()):
    found = maps.detections(k, recipe, options)
    column.image(encoded(scene(maps, k, image, found, display, truth, alpha, colormap, tile=True)),
                 output_format="JPEG",
                 caption=caption(label, maps, ranking.views, found, display, truth, k))
st.image(colorbar(colormap), caption="The maps, 0 at each one's minimum and 1 at its maximum")

st.subheader("Box recipes")
recipe_tiles(item, model_key, model, meta, image, k, display, truth, alpha, colormap, ranking.views)

st.subheader("Every method × recipe")
st.caption("Each recipe with its default options; every box counted, drawn or not."
           + ("" if truth else f" IoU: {NOT_IN_TRUTH}." if truth is not None else ""))
rows = [{"method": label, "recipe": name, **scored(maps.detections(k, name), truth)}
        for (label, name), maps in by_pair.items()]
show_table(pd.DataFrame(rows), key="compare_table", height="content")
