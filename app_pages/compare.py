"""Compare: one image, one class — every map method and every box recipe side by side, with IoU against
the ground truth when the image is annotated (the comparison the course makes by hand).

What is on screen and cheap comes first: the page's skeleton (so no picture of the previous photo
stays under the new one's name), the heading, CAM's tile and the recipes' tiles, then the other
methods one by one under a progress bar, then the method × recipe table, row by row. A method
costly even for one class (Score-CAM) is computed when asked, by the button in its tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from app_pages.analysis import analyze, estimate_seconds
from app_pages.inputs import demo_hint, ground_truth
from app_pages.methods import CAM, METHODS, AppMethod, offered, recipe_views
from app_pages.pickers import describe_options, pick_class, pick_recipe, ranked_classes
from app_pages.pictures import pick_box_display
from app_pages.state import carry, options_filter
from app_pages.subject import pick_subject
from app_pages.tables import show_table
from app_pages.tiles import NOT_IN_TRUTH, Scene, TileGrid, scored
from app_pages.words import truth_caption
from camloc.boxes import RECIPES
from camloc.viz import COLORMAPS, colorbar, format_score

_ASKED = "_costly_asked"  # {(image digest, model key, method label)} the user asked Compare to compute


def ask(context: tuple) -> None:
    """``on_click`` of a costly method's button: compute it for this image and model from now on."""
    st.session_state.setdefault(_ASKED, set()).add(context)


def asked(context: tuple) -> bool:
    return context in st.session_state.get(_ASKED, set())


def one_view(method: AppMethod, recipe: str) -> bool:
    """Whether ``method`` computes one view here (Score-CAM, unless the sidebar asks for the recipe's views)."""
    return method.one_view and recipe_views(recipe) > 1 and not st.session_state.get("all_views", False)


@dataclass(frozen=True)
class RecipeArea:
    """Where the recipes' tiles go: the “Maps from” picker, its note, a progress line, the tiles and their
    table. Laid out twice a run at the same place — empty in the page's skeleton, then by the fragment that
    fills it — so that each of the last photo's tiles and tables is replaced by an element at its own place
    before anything names the new photo (see :func:`skeleton_slot`)."""

    picker: Any
    note: Any
    status: Any
    grid: TileGrid

    @classmethod
    def lay_out(cls) -> RecipeArea:
        return cls(st.empty(), st.empty(), st.empty(), TileGrid(len(RECIPES), "recipe"))


@st.fragment
def recipe_tiles(item, model_key: str, model, meta: dict[str, Any], scene: Scene, methods: list[AppMethod]) -> None:
    """Every recipe on one method's maps (a fragment: picking the method reruns only these tiles)."""
    area = RecipeArea.lay_out()
    labels = [m.label for m in methods]
    carry("compare_maps", CAM.label, options_filter(labels))
    source = METHODS[area.picker.radio("Maps from", labels, horizontal=True, key="compare_maps")]
    area.note.caption("Each recipe with its default options." + (
        " One view of the image (the sidebar's box asks for the recipes' views)." if source.one_view else ""))
    for tile, name in zip(area.grid.tiles, RECIPES):
        maps = analyze(item, model_key, model, meta, source, name, focus=scene.k, one_view=one_view(source, name),
                       where=area.status)
        found = maps.detections(scene.k, name)
        scene.fill(tile, name, maps, found)
        area.grid.add_boxes(name, found, scene)


def skeleton_slot(area: Any) -> Any:
    """A placeholder in ``area`` (a container made in its place in the skeleton), made once the skeleton is queued.

    Streamlit's server queues a run's deltas and, until it flushes them, *composes* a delta written to a place
    already in the queue into that earlier slot. A placeholder made at the top of the skeleton and later filled
    with the new photo's name would reach the browser first, above the previous photo's pictures (and a block
    written over a placeholder would arrive as a block of the same kind, which the browser fills with the old
    children). The first delta of this placeholder comes after the skeleton, so whatever it says comes after
    every old picture is gone."""
    return area.empty()


def costly_tile(tile: Any, method: AppMethod, context: tuple, model_key: str, views: int) -> None:
    """The tile of a method computed when asked: what it costs, and the button that asks."""
    seconds = estimate_seconds(model_key, method, views)
    cost = ", ".join(filter(None, (method.cost_text(), f"≈ {seconds:.0f} s here" if seconds else "")))
    box = tile.container(border=True)
    box.caption(f"{method.label}: not computed yet" + (f" ({cost})" if cost else "") + ".")
    box.button(f"Compute {method.label}", key=f"compute_{method.name}", on_click=ask, args=(context,),
               help="It runs the network once per masked image; a progress bar follows it")


st.title("Compare methods and box recipes")
side = st.sidebar
model_key, model, meta, gt_data, item, decoded, class_slot = pick_subject("compare")
names = meta["class_names"]
recipe, options = pick_recipe()
methods = offered(recipe)
if any(m.one_view for m in methods) and recipe_views(recipe) > 1:
    carry("all_views", False)
    side.checkbox(f"Score-CAM over the recipe's {recipe_views(recipe)} views", key="all_views",
                  help="Score-CAM computes one view of the image unless asked (the recipe's boxes then skip their "
                       "averaging of views)")
display = pick_box_display()
carry("alpha", 0.5)
alpha = side.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
carry("colormap", "jet", options_filter(COLORMAPS))
colormap = side.selectbox("Colormap", sorted(COLORMAPS), key="colormap")

# the skeleton, before anything is computed: each picture, table and line of the previous photo is replaced by
# an element at its own place, and only then is the new photo named (see skeleton_slot)
heading_area, hint = st.container(), st.empty()
st.subheader("Methods")
setting = describe_options(options)
st.caption(f"Boxes: recipe {recipe}" + (f" ({setting})" if setting else "") + " on each method's map, numbered best "
           f"first; drawn: {display.rule} (sidebar); the tables list the boxes drawn, the last one counts them all.")
status_area = st.container()
method_grid = TileGrid(len(methods), "method")
st.image(colorbar(colormap), caption="The maps, 0 at each one's minimum and 1 at its maximum")
st.subheader("Box recipes")
recipes_area = st.empty()
with recipes_area.container():  # where the fragment's own container will be, laid out as it will lay it out
    RecipeArea.lay_out()
st.subheader("Every method × recipe")
table_note, table = st.empty(), st.empty()
heading, status = skeleton_slot(heading_area), skeleton_slot(status_area)
heading.caption(f"Computing the class probabilities of {item.name}…")

try:
    ranking = analyze(item, model_key, model, meta, recipe=recipe, where=status)
    k = pick_class(ranked_classes(ranking.probs, meta), meta, (model_key, item.digest), where=class_slot)
except (ValueError, RuntimeError) as exc:
    st.error(f"Could not run the model on {item.name}: {exc}")
    st.stop()
class_name = names[k]
truth = ground_truth(gt_data, item.name, class_name)
scene = Scene(decoded.image, k, truth, display, alpha, colormap, ranking.views)
known = truth_caption(None if truth is None else len(truth), class_name, "this image")
heading.caption(f"“{class_name}” in {item.name} (p = {format_score(ranking.probs[k])}, {ranking.views}, as on "
                f"Explore with recipe {recipe}); {known}.")
demo_hint(model_key, meta, item, hint)

# what is on screen and cheap first: CAM's tile (its maps made the heading) and the recipes' tiles
found = ranking.detections(k, recipe, options)
scene.fill(method_grid.tiles[0], CAM.label, ranking, found)
method_grid.add_boxes(CAM.label, found, scene)
with recipes_area:
    recipe_tiles(item, model_key, model, meta, scene, methods)

table_note.caption("Each recipe with its default options; every box counted, drawn or not."
                   + ("" if truth else f" IoU: {NOT_IN_TRUTH}." if truth is not None else ""))
rows: list[dict[str, Any]] = []
computed: list[AppMethod] = []
for position, (tile, method) in enumerate(zip(method_grid.tiles, methods)):
    context = (item.digest, model_key, method.label)
    if method.opt_in and not asked(context):
        costly_tile(tile, method, context, model_key, 1 if one_view(method, recipe) else recipe_views(recipe))
        continue
    if method != CAM:
        status.progress(position / len(methods), text=f"Computing {method.label} ({position + 1} of {len(methods)})…")
        try:
            maps = analyze(item, model_key, model, meta, method, recipe, focus=k, one_view=one_view(method, recipe),
                           where=status)
        except (ValueError, RuntimeError) as exc:
            tile.caption(f"{method.label}: could not run on {item.name} ({exc})")
            continue
        found = maps.detections(k, recipe, options)
        scene.fill(tile, method.label, maps, found)
        method_grid.add_boxes(method.label, found, scene)
    computed.append(method)
for method in computed:  # the table, a method's row of recipes at a time
    status.progress(len(rows) / (len(computed) * len(RECIPES)), text=f"Table: {method.label} under every recipe…")
    for name in RECIPES:
        maps = analyze(item, model_key, model, meta, method, name, focus=k, one_view=one_view(method, name),
                       where=status)
        label = method.label + (" (one view)" if maps.overrides else "")
        rows.append({"method": label, "recipe": name, **scored(maps.detections(k, name), truth)})
    show_table(pd.DataFrame(rows), where=table, height="content")
status.empty()
