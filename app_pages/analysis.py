"""The maps the pages show, computed once: per (image bytes, model, method, view), for every class at once.

Changing the class, threshold, box mode, recipe, opacity or colormap re-derives maps and boxes from
what was computed. TTA-CAM is the average of six views, one of which is the plain CAM pass, so
switching to it runs the network five more times and never again for that image; a recipe that
refines the maps with the mirrored image shares that mirrored view. ``st.session_state["forward_passes"]``
counts the views really computed. The boxes of a class under a recipe and its options are cached too
(:meth:`Maps.detections`), so a page that shows them twice, or again after a display change, computes
them once.

Views are kept in a store of the app's own (:class:`Computed`, shared by the sessions like a
``st.cache_resource``), not in a Streamlit cache: a cached function replays the elements it drew, so
a progress bar drawn while a view computes would be drawn again on every later hit. A computation
estimated at more than :data:`PROGRESS_AFTER` seconds shows a progress bar of its network passes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from app_pages.inputs import InputImage
from app_pages.methods import CAM, AppMethod
from app_pages.progress import passes_progress
from app_pages.state import carry, remembered
from camloc.boxes import DEFAULT_RECIPE, make_recipe
from camloc.cam import make_method
from camloc.localize import Analysis, Localizer
from camloc.models import CamModel
from camloc.models.geometry.measured import STIMULI as MEASURE_STIMULI
from camloc.pipeline.analysis import TTA_SCALES

#: A recipe that takes each method's maps as they are (the course recipe: no mirror image), for the
#: views of an analysis with no recipe in mind.
PLAIN_MAPS = "seed"
#: The "Align maps" toggle's key: maps laid on the image by the model's measured geometry (on) or the stretched grid.
ALIGN_KEY = "align_maps"


def align_toggle(where=st.sidebar) -> bool:
    """The "Align maps" toggle (every page's maps follow it; it starts as the default recipe's alignment)."""
    carry(ALIGN_KEY, make_recipe(DEFAULT_RECIPE).default_align == "measured")
    return where.toggle("Align maps", key=ALIGN_KEY,
                        help="Draw each map cell where the model's measured geometry says it looks (off: the map's "
                             "grid stretched over the image, as the course recipe does)")


def chosen_alignment() -> str:
    """``measured`` or ``none``, as the "Align maps" toggle was last set (on any page)."""
    return "measured" if remembered(ALIGN_KEY, make_recipe(DEFAULT_RECIPE).default_align == "measured") else "none"

ONE_VIEW = ((1.0, False),)
TTA_VIEWS = tuple((scale, flip) for scale in TTA_SCALES for flip in (False, True))
#: A computation estimated to take longer (in seconds) shows a progress bar.
PROGRESS_AFTER = 3.0


class Computed:
    """Analyses by key, the least recently used forgotten past ``size``, and the seconds of one CAM pass of
    each model (what the progress estimates are made of)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Analysis] = OrderedDict()
        self._lock = threading.Lock()
        self.pass_seconds: dict[str, float] = {}

    def get(self, key: Hashable) -> Analysis | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Analysis) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def computed() -> Computed:
    """The app's store of computed views and of their averages (one per server, cleared with the caches)."""
    return Computed(1024)


@st.cache_resource(max_entries=32, show_spinner=False)
def _localizer(model_id: int, method: str, tta: bool, align: str, _model: CamModel, _meta: dict[str, Any],
               _options: dict[str, Any]) -> Localizer:
    return Localizer(_model, _meta, method=make_method(method, **_options), tta=tta, device="cpu", align=align)


def localizer_for(model: CamModel, meta: dict[str, Any], method: AppMethod = CAM, align: str = "none") -> Localizer:
    """The Localizer of ``model`` for ``method`` (with the app's options for a costly method) and ``align``, made
    once (it holds the model, so no other model can take that model's id while it is cached)."""
    return _localizer(id(model), method.name, method.tta, align, model, meta, method.options)


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
    of views, and the key that its boxes and pictures are cached under. ``overrides``: recipe options every
    box of these maps is drawn with (one view of a recipe that averages several: without the averaging)."""

    key: tuple  # image digest, model, method, TTA, alignment, views, the classes whose maps are computed (None: all)
    analysis: Analysis
    localizer: Localizer
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def probs(self) -> np.ndarray:
        return self.analysis.probs.numpy()

    @property
    def views(self) -> str:
        return views_label(self.analysis.views)

    def detections(self, k: int, recipe: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Class ``k``'s boxes under ``recipe`` with ``options`` (cached), best score first."""
        chosen = {**(options or {}), **dict(self.overrides)}
        return _detections(self.key, k, recipe, tuple(sorted(chosen.items())), self)


def analyze(image: InputImage, model_key: str, model: CamModel, meta: dict[str, Any], method: AppMethod = CAM,
            recipe: str | None = None, focus: int | None = None, one_view: bool = False, where: Any = None) -> Maps:
    """The maps of ``image`` by ``method``: over the TTA views (TTA-CAM), or those box ``recipe`` needs (a
    ``flip`` recipe: the image and its mirror), or (no recipe, or ``one_view``) the image alone — and then
    the recipe's boxes are drawn without its averaging.

    Gradient methods too compute every class at once (one forward pass, batched backward passes
    through the head only), which costs little more than one class and makes class changes free —
    except a costly one (fused LayerCAM), which computes the ``focus`` class only (see
    :meth:`AppMethod.classes`). A computation estimated past :data:`PROGRESS_AFTER` seconds shows its
    progress in ``where`` (default: the page).
    """
    align = chosen_alignment()
    localizer = localizer_for(model, meta, method, align)
    needed = tuple(localizer.views(recipe or PLAIN_MAPS))
    views = ONE_VIEW if one_view else needed
    classes = method.classes(meta["num_classes"], focus)
    key = (image.digest, model_key, method.name, method.tta, align, views, classes)
    overrides = (("flip", False), ("tta", False)) if views != needed else ()
    store = computed()
    joined = store.get(("joined", key))
    if joined is None:
        analyses = compute_views(store, image, model_key, method, classes, views, localizer, where)
        joined = analyses[0] if len(analyses) == 1 else Analysis.average(analyses)
        store.put(("joined", key), joined)
    return Maps(key, joined, localizer, overrides)


def estimate_seconds(model_key: str, method: AppMethod, views: int) -> float | None:
    """About how long ``views`` views of ``method`` take with this model: its measured cost in CAM passes ×
    the seconds of this model's last CAM pass (``None`` before one was computed)."""
    seconds = computed().pass_seconds.get(model_key)
    if seconds is None:
        return None
    cost = method.cost
    each = float(method.passes_per_view) if cost is None else cost / len(TTA_VIEWS) if method.tta else cost
    return seconds * each * views


def compute_views(store: Computed, image: InputImage, model_key: str, method: AppMethod,
                  classes: tuple[int, ...] | None, views: tuple[tuple[float, bool], ...], localizer: Localizer,
                  where: Any) -> list[Analysis]:
    """Each view's analysis, from the store or computed now (with a progress bar when it takes a while)."""
    keys = [(image.digest, model_key, method.name, localizer.align, classes, view) for view in views]
    found = {key: store.get(key) for key in keys}
    missing = [key for key, analysis in found.items() if analysis is None]
    if missing:
        pending = localizer.unmeasured_geometries([key[-1] for key in missing])
        if pending:  # once per model on this machine: not in the first pass's time, nor silent
            with st.spinner(f"Measuring where this model's map cells look in the image (once per model: kept on "
                            f"this machine; {MEASURE_STIMULI} test patterns)…"):
                localizer.measure_geometries(pending)
        total = method.passes_per_view * len(missing)
        slow = (estimate_seconds(model_key, method, len(missing)) or 0.0) > PROGRESS_AFTER
        what = f"Computing {method.label} for {image.name}"
        with passes_progress(localizer.model, where or st, what, total) if slow else nullcontext():
            for key in missing:
                start = time.perf_counter()
                found[key] = localizer.analyze([image.data], classes, views=[key[-1]])[0]
                if method.name == CAM.name:
                    store.pass_seconds[model_key] = time.perf_counter() - start
                store.put(key, found[key])
                st.session_state["forward_passes"] = st.session_state.get("forward_passes", 0) + 1
    return [found[key] for key in keys]
