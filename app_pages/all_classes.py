"""All classes: the top-k CAM grid and a multi-class colour overlay, from one forward pass per view."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from PIL import Image

from app_pages import detector_view
from app_pages.analysis import Maps, analyze
from app_pages.inputs import choose_images, decode, demo_hint, pick_image
from app_pages.model_picker import pick_model
from app_pages.pickers import chosen_recipe, ranked_classes
from app_pages.state import carry, options_filter
from app_pages.tables import show_table
from camloc.detector import is_detector_meta
from camloc.viz import cam_grid, color_hex, colorbar, distinct_colors, format_score, multiclass_overlay


@st.cache_data(max_entries=32, show_spinner=False)
def grid_picture(key: tuple, top: tuple[int, ...], titles: tuple[str, ...], columns: int, alpha: float,
                 _image: Image.Image, _maps: Maps) -> Image.Image:
    return cam_grid(_image, list(_maps.analysis.heatmaps(list(top)).numpy()), list(titles), columns=columns,
                    alpha=alpha)


@st.cache_data(max_entries=32, show_spinner=False)
def overlay_picture(key: tuple, chosen: tuple[int, ...], floor: float, _image: Image.Image,
                    _maps: Maps) -> Image.Image:
    return multiclass_overlay(_image, _maps.analysis.heatmaps(list(chosen)).numpy(), alpha=0.65, floor=floor)


@st.fragment
def overlay_section(maps: Maps, image: Image.Image, names: list[str], ranked: list[int], context: tuple) -> None:
    """The multi-class overlay and its legend (a fragment: its controls rerun only this section)."""
    st.subheader("Multi-class overlay")
    carry("overlay_floor", 0.3)
    floor = st.slider("Hide heat below", 0.0, 0.9, step=0.05, key="overlay_floor")
    options = [names[c] for c in ranked]
    carry("overlay_classes", options[:4], options_filter(options), context=context)
    chosen = st.multiselect("Classes", options, key="overlay_classes")
    indices = [names.index(n) for n in chosen]
    if not indices:
        st.info("Pick at least one class for the overlay.")
        return
    st.image(overlay_picture(maps.key, tuple(indices), floor, image, maps),
             caption="Each pixel takes the colour of its hottest class; the colours are chosen for the classes "
                     "shown, as far apart as possible")
    legend = pd.DataFrame({"class": chosen, "probability": [float(maps.probs[i]) for i in indices]})
    show_table(legend, key="overlay_legend", colours=[color_hex(c) for c in distinct_colors(len(indices))])


st.title("All classes at once")
picked = pick_model()
images = choose_images(None if picked is None else picked[2])
if picked is None or not images:
    st.stop()
model_key, model, meta = picked
if is_detector_meta(meta):
    st.info(detector_view.NO_MAP)
    st.stop()
item = pick_image(images)
decoded = decode(item)
if decoded is None:
    st.stop()
image = decoded.image
recipe = chosen_recipe()
try:
    maps = analyze(item, model_key, model, meta, recipe=recipe)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
names = meta["class_names"]
probs = maps.probs
ranked = ranked_classes(probs, meta)
demo_hint(model_key, meta, item)
most = min(16, len(ranked))
carry("grid_k", min(8, most), lambda value: 1 <= value <= most)
k = st.sidebar.slider("Classes shown (top-k)", 1, most, key="grid_k")
carry("grid_columns", 4)
columns = st.sidebar.slider("Grid columns", 1, 6, key="grid_columns")
carry("grid_alpha", 0.5)
alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="grid_alpha")
top = ranked[:k]

st.subheader(f"Top-{k} class activation maps")
st.caption(f"CAMs and probabilities of {maps.views}, as box recipe {recipe} (Explore, Compare) uses them.")
st.image(grid_picture(maps.key, tuple(top), tuple(f"{names[c]} {format_score(probs[c])}" for c in top), columns,
                      alpha, image, maps), caption="Each tile: the CAM of one class, titled with its probability")
st.image(colorbar(), caption="Each map, 0 at its minimum and 1 at its maximum")
overlay_section(maps, image, names, ranked, (model_key, item.digest))
