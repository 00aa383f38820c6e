"""The sidebar's pickers that read the maps: class (per image), map method, box recipe with its controls —
and the recipe and its settings in words a person reads (no module names, no option keys)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import streamlit as st

from app_pages.methods import CAM, METHODS, AppMethod, costs_help, offered, recipe_averages_tta, recipe_views
from app_pages.state import carry, options_filter, remembered
from camloc.boxes import DEFAULT_RECIPE, FULL_RESOLUTION, RECIPES
from camloc.boxes.contours import BOX_MODES

THRESHOLD_MODES = ("Otsu", "Fraction of max")
#: The box resolutions offered for recipes with a ``box_scale`` option (× the feature grid, or the image's).
BOX_SCALES = (1, 2, 4, 8, FULL_RESOLUTION)


def ranked_classes(probs: np.ndarray, meta: dict[str, Any]) -> list[int]:
    """Class indices by decreasing probability, without the classes the model cannot see."""
    unsupported = set(meta.get("unsupported_classes", ()))
    return [int(k) for k in np.argsort(-probs, kind="stable") if meta["class_names"][int(k)] not in unsupported]


def pick_class(ranked: list[int], meta: dict[str, Any], context: tuple, where=st.sidebar) -> int:
    """The class picker: a new image or model starts on its own top class; a class picked for this
    image (``context``) stays picked, on every page."""
    names = meta["class_names"]
    options = [names[k] for k in ranked]
    carry("class_name", options[0], options_filter(options), context=context)
    chosen = where.selectbox("Class", options, key="class_name",
                             help="Any class of the model; sorted by probability, the top class first")
    return names.index(chosen)


def pick_method(recipe: str, where=st.sidebar) -> tuple[AppMethod, bool]:
    """The map method picker (each option with its measured cost) and, for a method that computes one view
    unless asked (Score-CAM) under a recipe of several views, the box that asks. Returns the method and
    whether it computes one view only."""
    methods = {m.label: m for m in offered(recipe)}
    carry("method", CAM.label, options_filter(methods))
    help_text = costs_help()
    if recipe_averages_tta(recipe):
        help_text += f"\n\nTTA-CAM is not offered: recipe {recipe} already averages the six TTA views."
    label = where.selectbox("Method", list(methods), key="method", help=help_text,
                            format_func=lambda name: " · ".join(filter(None, (name, METHODS[name].cost_text()))))
    method = methods[label]
    views = recipe_views(recipe)
    if not (method.one_view and views > 1):
        return method, False
    carry("all_views", False)
    every = where.checkbox(f"{method.label} over the recipe's {views} views", key="all_views",
                           help=f"{method.label} computes one view of the image unless asked: {views} views take "
                                f"{views} times as long. With one view, recipe {recipe} draws its boxes without "
                                "averaging views.")
    return method, not every


def plain(text: str) -> str:
    """A docstring paragraph for a person: no references to modules, recipe classes named as the picker
    names them, code marks as Markdown's."""
    names = {cls.__name__: name for name, cls in RECIPES.items()}
    text = re.sub(r"\s*\((?:see )?:mod:`[^`]*`\)", "", text)
    text = re.sub(r":class:`~?(?:[\w.]+\.)?(\w+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", text)
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return text.replace("``", "`")


def describe_recipe(name: str) -> str:
    """The first paragraph of recipe ``name``'s docstring, for a person."""
    doc = RECIPES[name].__doc__ or ""
    return plain(" ".join(doc.strip().split("\n\n")[0].split()))


def describe_options(options: dict[str, Any]) -> str:
    """The recipe settings chosen in the sidebar, in words: ``"Otsu's threshold, all boxes, traced at the
    image's resolution"``."""
    words = []
    if "threshold" in options:
        threshold = options["threshold"]
        words.append("Otsu's threshold" if threshold == "otsu" else f"threshold {threshold:g} of the max")
    if "mode" in options:
        words.append("the largest box" if options["mode"] == "largest" else "every box")
    if "box_scale" in options:
        scale = options["box_scale"]
        words.append("traced at the image's resolution" if scale == FULL_RESOLUTION
                     else f"traced at {scale}× the feature grid")
    return ", ".join(words)


def chosen_recipe() -> str:
    """The box recipe picked on Explore or Compare (the default before), for a page without the picker."""
    names = list(RECIPES)
    return remembered("recipe", DEFAULT_RECIPE if DEFAULT_RECIPE in names else names[0], options_filter(names))


def pick_recipe(where=st.sidebar) -> tuple[str, dict[str, Any]]:
    """The box recipe picker with the threshold / box-mode controls the chosen recipe has.

    Returns the recipe's name and the options set here (the recipe's defaults for the others);
    each recipe remembers its own settings.
    """
    names = list(RECIPES)
    carry("recipe", DEFAULT_RECIPE if DEFAULT_RECIPE in names else names[0], options_filter(names))
    name = where.selectbox("Box recipe", names, key="recipe",
                           help="How maps become boxes; every recipe of the library is listed")
    recipe = RECIPES[name]
    where.caption(describe_recipe(name))
    defaults = recipe.parameters()
    options: dict[str, Any] = {}
    if "threshold" in defaults:
        otsu = defaults["threshold"] == "otsu"
        carry("threshold_mode", THRESHOLD_MODES[0 if otsu else 1], options_filter(THRESHOLD_MODES), context=name)
        if where.radio("Threshold", THRESHOLD_MODES, horizontal=True, key="threshold_mode") == THRESHOLD_MODES[0]:
            options["threshold"] = "otsu"
        else:
            carry("fraction", 0.3 if otsu else float(defaults["threshold"]), context=name)
            options["threshold"] = where.slider("Fraction", 0.05, 0.95, step=0.05, key="fraction")
    if "mode" in defaults:
        carry("box_mode", defaults["mode"], options_filter(BOX_MODES), context=name)
        options["mode"] = where.radio("Boxes", BOX_MODES, horizontal=True, key="box_mode")
    if "box_scale" in defaults and recipe.traces_on_grid:
        default_scale = FULL_RESOLUTION if defaults["box_scale"] is None else defaults["box_scale"]
        carry("box_scale", default_scale, options_filter(BOX_SCALES), context=name)
        options["box_scale"] = where.radio(
            "Box resolution", BOX_SCALES, horizontal=True, key="box_scale",
            format_func=lambda s: "image" if s == FULL_RESOLUTION else f"{s}× grid",
            help="Where regions become boxes: at a few times the feature grid (fast) or at the image's own "
                 "resolution")
    return name, options
