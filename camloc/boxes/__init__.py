"""The box stage: class maps → scored boxes, by recipes chosen by name.

What (the recipes, top floor): :mod:`~camloc.boxes.registry` (the :class:`Recipe` base, :data:`RECIPES`,
:func:`make_recipe`), :mod:`~camloc.boxes.gating` (which classes get boxes), one file per family —
:mod:`~camloc.boxes.seed` (the course recipe), :mod:`~camloc.boxes.evidence`, :mod:`~camloc.boxes.multilevel`.

How (the stages the recipes call, never the other way): :mod:`~camloc.boxes.grid` (a whole batch at a multiple
of the feature grid, on the maps' device), :mod:`~camloc.boxes.device` (full-resolution masks on the device,
traced on the host), :mod:`~camloc.boxes.contours` (OpenCV contours on the host), :mod:`~camloc.boxes.proposals`
(levels, instances, evidence), and their primitives :mod:`~camloc.boxes.levels` (Otsu and fixed cuts),
:mod:`~camloc.boxes.components` (connected components), :mod:`~camloc.boxes.nms` (greedy NMS of many groups).
"""

from camloc.boxes import evidence, multilevel, seed  # noqa: F401  (registers the recipes)
from camloc.boxes.contours import BOX_MODES, heatmaps_to_boxes
from camloc.boxes.gating import CALIBRATION_FLOOR, GATES, class_indices, parse_class_selection, select_classes
from camloc.boxes.registry import (
    BOX_CHUNK,
    DEFAULT_RECIPE,
    FULL_RESOLUTION,
    MAX_BOX_SCALE,
    RECIPES,
    BatchBoxes,
    Recipe,
    ScoredBoxes,
    make_recipe,
    register,
)
from camloc.boxes.seed import boxes_from_raw_maps

__all__ = ["BOX_CHUNK", "BOX_MODES", "CALIBRATION_FLOOR", "DEFAULT_RECIPE", "FULL_RESOLUTION", "GATES",
           "MAX_BOX_SCALE", "RECIPES", "BatchBoxes", "Recipe", "ScoredBoxes", "boxes_from_raw_maps", "class_indices",
           "heatmaps_to_boxes", "make_recipe", "parse_class_selection", "register", "select_classes"]
