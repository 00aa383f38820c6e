"""Cached forward passes and the pickers that read them: class (per image) and box recipe.

The network runs once per (image bytes, model, method, view), for every class at once, and the
result is cached, so changing the class, threshold, box mode, recipe, opacity or colormap
re-derives maps and boxes from the cache. TTA-CAM is the average of six cached views, one of which
is the plain CAM pass, so switching to it runs the network five more times and never again for that
image; a recipe that refines the maps with the mirrored image shares that mirrored view.
``st.session_state["forward_passes"]`` counts the views really computed.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import streamlit as st

from camloc.boxes import BOX_MODES
from camloc.cam import METHODS as MAP_METHODS
from camloc.cam import make_method
from camloc.localize import Analysis, Localizer
from camloc.models import CamModel
from camloc.recipes import DEFAULT_RECIPE, RECIPES
from pages.inputs import InputImage
from pages.state import carry, options_filter

#: Every registered map method by its label (new methods appear by themselves), and TTA-CAM.
METHODS = {cls.label: (name, False) for name, cls in MAP_METHODS.items()} | {"TTA-CAM": ("cam", True)}
#: What a costly method needs here: Score-CAM runs one forward pass per feature channel (1280 for
#: MobileNetV2, minutes on a CPU), so the app keeps the 64 channels that vary most (64 passes per view).
APP_OPTIONS = {"scorecam": {"max_channels": 64}}
THRESHOLD_MODES = ("Otsu", "Fraction of max")
#: A recipe that takes each method's maps as they are (the course recipe: no mirror image), for the
#: views of an analysis with no recipe in mind (class ranking, the All classes page).
PLAIN_MAPS = "seed"


def localizer_for(model: CamModel, meta: dict[str, Any], method: str = "cam", tta: bool = False) -> Localizer:
    return Localizer(model, meta, method=make_method(method, **APP_OPTIONS.get(method, {})), tta=tta, device="cpu")


@st.cache_data(show_spinner="Running the network…", max_entries=256)
def _analyze_view(image_bytes: bytes, model_key: str, method: str, classes: tuple[int, ...] | None,
                  view: tuple[float, bool], _localizer: Localizer) -> Analysis:
    """One view's forward pass (and backward, for gradient methods), cached on the bytes themselves."""
    st.session_state["forward_passes"] = st.session_state.get("forward_passes", 0) + 1
    return _localizer.analyze([image_bytes], classes, views=[view])[0]


def analyze(image: InputImage, model_key: str, model: CamModel, meta: dict[str, Any], method: str = "cam",
            tta: bool = False, recipe: str | None = None, focus: int | None = None) -> Analysis:
    """The analysis of ``image``, with the maps of every class, from cached views: the TTA views, or those
    box ``recipe`` needs (a ``flip`` recipe: the image and its mirror), or (no recipe) the image alone.

    Gradient methods too compute every class at once (one forward pass, batched backward passes
    through the head only), which costs little more than one class and makes class changes free —
    except a costly one (fused LayerCAM: backward passes through most of the network), which computes
    the ``focus`` class only (a class change runs it again, for that class).
    """
    chosen = MAP_METHODS[method]
    classes = None if not chosen.per_class else tuple(range(meta["num_classes"]))
    if chosen.per_class and chosen.costly and focus is not None:
        classes = (focus,)
    localizer = localizer_for(model, meta, method, tta)
    views = [_analyze_view(image.data, model_key, method, classes, view, localizer)
             for view in localizer.views(recipe or PLAIN_MAPS)]
    return views[0] if len(views) == 1 else Analysis.average(views)


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


def pick_recipe(where=st.sidebar) -> tuple[str, dict[str, Any]]:
    """The box recipe picker with the threshold / box-mode controls the chosen recipe has.

    Returns the recipe's name and the options set here (the recipe's defaults for the others);
    each recipe remembers its own settings.
    """
    names = list(RECIPES)
    name = carry("recipe", DEFAULT_RECIPE if DEFAULT_RECIPE in names else names[0], options_filter(names))
    name = where.selectbox("Box recipe", names, key="recipe",
                           help="How maps become boxes (camloc.recipes); new recipes appear here by themselves")
    recipe = RECIPES[name]
    if recipe.__doc__:
        summary = " ".join(recipe.__doc__.strip().split("\n\n")[0].split())
        where.caption(re.sub(r":\w+:`~?([^`]+)`", r"`\1`", summary))
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
    return name, options
