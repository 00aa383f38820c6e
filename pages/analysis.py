"""Cached forward passes and the pickers that read them: class (per image) and box recipe.

The network runs once per (image bytes, model, method, view), for every class at once, and the
result is cached, so changing the class, threshold, box mode, recipe, opacity or colormap
re-derives maps and boxes from the cache. TTA-CAM is the average of six cached views, one of which
is the plain CAM pass, so switching to it runs the network five more times and never again for that
image; a recipe that refines the maps with the mirrored image shares that mirrored view.
``st.session_state["forward_passes"]`` counts the views really computed. The boxes of a class under
a recipe and its options are cached too (:meth:`Maps.detections`), so a page that shows them twice,
or again after a display change, computes them once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from camloc.boxes import DEFAULT_RECIPE, FULL_RESOLUTION, RECIPES
from camloc.boxes.contours import BOX_MODES
from camloc.cam import METHODS as MAP_METHODS
from camloc.cam import make_method
from camloc.localize import Analysis, Localizer
from camloc.models import CamModel
from pages.inputs import InputImage
from pages.state import carry, options_filter, remembered

#: Every registered map method by its label (new methods appear by themselves), and TTA-CAM.
METHODS = {cls.label: (name, False) for name, cls in MAP_METHODS.items()} | {"TTA-CAM": ("cam", True)}
#: What a costly method needs here: Score-CAM runs one forward pass per feature channel (1280 for
#: MobileNetV2, minutes on a CPU), so the app keeps the 64 channels that vary most (64 passes per view).
APP_OPTIONS = {"scorecam": {"max_channels": 64}}
THRESHOLD_MODES = ("Otsu", "Fraction of max")
#: The box resolutions offered for recipes with a ``box_scale`` option (× the feature grid, or the image's).
BOX_SCALES = (1, 2, 4, 8, FULL_RESOLUTION)
#: A recipe that takes each method's maps as they are (the course recipe: no mirror image), for the
#: views of an analysis with no recipe in mind.
PLAIN_MAPS = "seed"


@st.cache_resource(max_entries=32, show_spinner=False)
def _localizer(model_id: int, method: str, tta: bool, _model: CamModel, _meta: dict[str, Any]) -> Localizer:
    return Localizer(_model, _meta, method=make_method(method, **APP_OPTIONS.get(method, {})), tta=tta, device="cpu")


def localizer_for(model: CamModel, meta: dict[str, Any], method: str = "cam", tta: bool = False) -> Localizer:
    """The Localizer of ``model`` for ``method`` (with the app's options for a costly method), made once (it
    holds the model, so no other model can take that model's id while it is cached)."""
    return _localizer(id(model), method, tta, model, meta)


@st.cache_data(show_spinner="Running the network…", max_entries=256)
def _analyze_view(digest: str, model_key: str, method: str, classes: tuple[int, ...] | None,
                  view: tuple[float, bool], _image_bytes: bytes, _localizer: Localizer) -> Analysis:
    """One view's forward pass (and backward, for gradient methods), cached on the image's digest."""
    st.session_state["forward_passes"] = st.session_state.get("forward_passes", 0) + 1
    return _localizer.analyze([_image_bytes], classes, views=[view])[0]


@st.cache_data(max_entries=1024, show_spinner=False)
def _detections(key: tuple, k: int, recipe: str, options: tuple[tuple[str, Any], ...],
                _maps: Maps) -> list[dict[str, Any]]:
    found = _maps.localizer.detections(_maps.analysis, classes=[k], recipe=recipe, **dict(options))
    return sorted(found, key=lambda d: -d["score"])


def views_label(views: tuple[tuple[float, bool], ...]) -> str:
    """What an analysis averages, in words."""
    if len(views) == 1:
        return "one view of the image"
    if {scale for scale, _ in views} == {1.0}:
        return "the image and its mirror image, averaged"
    return f"{len(views)} views averaged: {len({scale for scale, _ in views})} scales, each with its mirror image"


@dataclass(frozen=True)
class Maps:
    """One image's analysis (probabilities of every class and maps of every class) for one method and set
    of views, and the key that its boxes and pictures are cached under."""

    key: tuple  # image digest, model, method, TTA, views, the classes whose maps are computed (None: all)
    analysis: Analysis
    localizer: Localizer

    @property
    def probs(self) -> np.ndarray:
        return self.analysis.probs.numpy()

    @property
    def views(self) -> str:
        return views_label(self.analysis.views)

    def detections(self, k: int, recipe: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Class ``k``'s boxes under ``recipe`` with ``options`` (cached), best score first."""
        return _detections(self.key, k, recipe, tuple(sorted((options or {}).items())), self)


def analyze(image: InputImage, model_key: str, model: CamModel, meta: dict[str, Any], method: str = "cam",
            tta: bool = False, recipe: str | None = None, focus: int | None = None) -> Maps:
    """The maps of ``image``, of every class, from cached views: the TTA views, or those box ``recipe``
    needs (a ``flip`` recipe: the image and its mirror), or (no recipe) the image alone.

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
    key = (image.digest, model_key, method, tta, tuple(localizer.views(recipe or PLAIN_MAPS)), classes)
    return Maps(key, _joined_views(key, image.data, localizer), localizer)


@st.cache_resource(max_entries=512, show_spinner=False)
def _joined_views(key: tuple, _image_bytes: bytes, _localizer: Localizer) -> Analysis:
    """The analysis over the views of ``key`` (``(digest, model, method, TTA, views, classes)``) from the cached
    views, kept as one object (read-only), so that a page asking for it again pays one lookup, not one per view."""
    digest, model_key, method, _, views, classes = key
    analyses = [_analyze_view(digest, model_key, method, classes, view, _image_bytes, _localizer) for view in views]
    return analyses[0] if len(analyses) == 1 else Analysis.average(analyses)


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
                           help="How maps become boxes (camloc.boxes); new recipes appear here by themselves")
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
    if "box_scale" in defaults and recipe.traces_on_grid:
        default_scale = FULL_RESOLUTION if defaults["box_scale"] is None else defaults["box_scale"]
        carry("box_scale", default_scale, options_filter(BOX_SCALES), context=name)
        options["box_scale"] = where.radio(
            "Box resolution", BOX_SCALES, horizontal=True, key="box_scale",
            format_func=lambda s: "image" if s == FULL_RESOLUTION else f"{s}× grid",
            help="Where regions become boxes: at a few times the feature grid (fast, on the maps' device) or at "
                 "the image's own resolution; see the README's Box recipes")
    return name, options
