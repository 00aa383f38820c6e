"""The map methods the app offers — every registered method, and TTA-CAM — with what each costs here.

A method's cost is measured, not guessed: ``bench/app_method_costs.py`` times one view of each method as
the app computes it (every class, or the class shown for a method that backpropagates through the
network for each class) against one CAM pass, and writes :data:`COSTS_FILE`. Score-CAM, hundreds of
times CAM, computes one view of the image unless the user asks for the recipe's views; on Compare
it is computed when asked (:attr:`AppMethod.opt_in`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from camloc.boxes import RECIPES
from camloc.cam import DEFAULT_METHOD, MapMethod
from camloc.cam import METHODS as MAP_METHODS

COSTS_FILE = Path(__file__).with_name("method_costs.json")
#: What a costly method needs here: Score-CAM runs one forward pass per feature channel (1280 for
#: MobileNetV2), so the app keeps the 64 channels that vary most, and runs its masked images 8 at a
#: time, so that its progress bar moves every 8 passes.
APP_OPTIONS = {"scorecam": {"max_channels": 64, "batch_size": 8}}


@dataclass(frozen=True)
class AppMethod:
    """A method as the app offers it: its label, the registered method, and whether it is TTA-CAM (the six
    TTA views, whatever the recipe)."""

    label: str
    name: str
    tta: bool = False

    @property
    def registered(self) -> type[MapMethod]:
        return MAP_METHODS[self.name]

    @property
    def options(self) -> dict[str, Any]:
        return APP_OPTIONS.get(self.name, {})

    @property
    def one_view(self) -> bool:
        """Computed on one view of the image unless the user asks for the recipe's views (masked passes:
        tens of network passes per view)."""
        return self.registered.masked_passes

    @property
    def opt_in(self) -> bool:
        """Costly even for the one class shown: Compare computes it when asked."""
        return self.registered.costly and not self.registered.per_class

    def classes(self, num_classes: int, focus: int | None) -> tuple[int, ...] | None:
        """The classes whose maps are computed: every class (``None``: in one go) — the ``focus`` class only
        for a method that backpropagates through most of the network for each class (fused LayerCAM)."""
        chosen = self.registered
        if not chosen.per_class:
            return None
        return (focus,) if chosen.costly and focus is not None else tuple(range(num_classes))

    @property
    def passes_per_view(self) -> int:
        """Network passes of one view, as a progress bar counts them (the masked images, and the pass itself)."""
        return 1 + (self.options.get("max_channels", 0) if self.registered.masked_passes else 0)

    @property
    def cost(self) -> float | None:
        """Measured seconds of one view (TTA-CAM: of its six), in CAM passes (CAM: 1, the unit); ``None`` when
        not measured."""
        if self.name == DEFAULT_METHOD and not self.tta:
            return 1.0
        return measured().get("cost", {}).get(self.label)

    def cost_text(self) -> str:
        """``"≈ 211 passes a view"`` (in CAM passes), ``"1 pass"`` for CAM, ``""`` when not measured."""
        cost = self.cost
        if cost is None:
            return ""
        if cost == 1.0 and not self.tta:
            return "1 pass"
        rounded = f"{cost:.2g}" if cost < 10 else f"{round(cost)}"  # two digits: a measured cost is rough
        return f"≈ {rounded} passes " + ("(six views)" if self.tta else "a view")

    def map_caption(self, class_name: str) -> str:
        """``"Grad-CAM of “dog”"``, or for a class-agnostic method that its map is every class's."""
        if self.registered.class_agnostic:
            return f"{self.label} (class-agnostic: the same map for every class)"
        return f"{self.label} of “{class_name}”"


METHODS: dict[str, AppMethod] = {cls.label: AppMethod(cls.label, name) for name, cls in MAP_METHODS.items()}
METHODS["TTA-CAM"] = AppMethod("TTA-CAM", "cam", tta=True)
CAM = METHODS[MAP_METHODS[DEFAULT_METHOD].label]


@cache
def measured() -> dict[str, Any]:
    """The record ``bench/app_method_costs.py`` wrote: ``cost`` (``{label: CAM passes}``) and ``measured`` (on
    what); empty when the file is missing or unreadable."""
    try:
        record = json.loads(COSTS_FILE.read_text())
        return {"cost": {str(k): float(v) for k, v in record["cost"].items()}, "measured": str(record["measured"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def recipe_views(recipe: str) -> int:
    """How many views of the image box ``recipe`` averages: six (TTA), two (the image and its mirror) or one."""
    parameters = RECIPES[recipe].parameters()
    return 6 if parameters.get("tta") else 2 if parameters.get("flip") else 1


def recipe_averages_tta(recipe: str) -> bool:
    """Whether box ``recipe`` already averages the six TTA views (TTA-CAM would then be CAM itself)."""
    return recipe_views(recipe) == 6


def offered(recipe: str) -> list[AppMethod]:
    """The methods worth offering with ``recipe``: all of them, less TTA-CAM when the recipe already averages
    the TTA views."""
    return [m for m in METHODS.values() if not (m.tta and recipe_averages_tta(recipe))]


def costs_help() -> str:
    """The picker's help: each method's cost, measured, and what a CAM pass is."""
    lines = [f"- {m.label}: {m.cost_text()}" for m in METHODS.values() if m.cost_text()]
    if not lines:
        return "How the maps are made: see the map methods in the docs."
    return ("What each method costs, in passes of CAM (one CAM pass gives every class's map), for one view of the "
            "image:\n\n" + "\n".join(lines) + f"\n\nMeasured {measured()['measured']}.")
