"""docs/decisions.md's rule for the default (method, recipe, align), applied to ``bench/recipes.py``'s results.

:func:`choose_default` is points 1–3 (candidates within the cost limit, qualification on both sets, the highest
geometric mean of the four ratios to ``seed``); :func:`choose_alignments` is point 4 (each recipe's default
alignment from its paired aligned / not aligned ratios).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: A default may cost at most this many times the current default's seconds per real image.
COST_LIMIT = 10.0
#: The rows' recipe for each registered recipe whose default alignment point 4 decides: (recipe, maps) of a row.
RECIPE_ROWS = {"evidence": ("evidence", "plain"), "multilevel": ("multilevel", "plain"),
               "instances": ("instances", "plain"), "multilevel-flip": ("multilevel-flip", "flip"),
               "multilevel-tta": ("multilevel", "tta")}


def interval(draws: list[float]) -> tuple[float, float]:
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if all(v > 0 for v in values) else 0.0


def choose_default(results: dict[str, dict[str, Any]], rows: list[Any], current: Any, full: Any) -> str:
    """Apply the rule (docs/decisions.md) to ``results[set][row label]`` and print why; returns the chosen label."""
    sets = list(results)
    limit = COST_LIMIT * results["real"][current.label].seconds_per_image
    candidates = [r.label for r in rows if r.recipe not in ("seed", "full")
                  and results["real"][r.label].seconds_per_image <= limit]
    low = {label: {s: {m: interval(results[s][label].ratio_draws[m])[0] for m in ("AP", "AP50")} for s in sets}
           for label in candidates}
    qualified = [label for label in candidates if all(
        low[label][s][m] >= 1.0 and results[s][label].point[m] > results[s][full.label].point[m]
        for s in sets for m in ("AP", "AP50"))]

    def gain(label: str) -> float:
        return geometric_mean([results[s][label].ratio[m] for s in sets for m in ("AP", "AP50")])

    print(f"\n### The rule (docs/decisions.md), current default {current.label}\n")
    print(f"candidates within {COST_LIMIT:g}× the current default's time per real image ({limit:.2f} s): "
          f"{len(candidates)} of {sum(r.recipe not in ('seed', 'full') for r in rows)}")
    for label in candidates:
        marks = ", ".join(f"{s} AP50 ≥ {low[label][s]['AP50']:.2f}, AP ≥ {low[label][s]['AP']:.2f}" for s in sets)
        print(f"- {label}: {'qualifies' if label in qualified else 'no'} ({marks}; gain {gain(label):.2f}×)")
    if qualified:
        chosen = max(qualified, key=gain)
        print(f"\nrule picks: {chosen} (highest geometric mean of its AP and AP50 ratios on both sets)")
    else:
        chosen = max(candidates, key=lambda label: min(low[label][s]["AP50"] for s in sets))
        print(f"\nno candidate qualifies; best AP50 lower bound: {chosen}")
    targets = all(results[s][chosen].ratio[m] >= 1.5 for s in sets for m in ("AP", "AP50")) and all(
        low[chosen][s][m] > 1.0 for s in sets for m in ("AP", "AP50"))
    print(f"issue targets (AP and AP50 ≥ 1.5× seed on both sets, lower bounds above 1): "
          f"{'met' if targets else 'not met'}")
    return chosen


def choose_alignments(results: dict[str, dict[str, Any]], rows: list[Any]) -> dict[str, str]:
    """Point 4: each recipe's default alignment — ``measured`` when the geometric mean of its four paired ratios
    aligned / not aligned is ≥ 1; prints the ratios with their intervals."""
    sets = list(results)
    chosen = {}
    print("\n### Each recipe's default alignment (point 4): aligned / not aligned, paired\n")
    heads = " | ".join(f"{s} {m}" for s in sets for m in ("AP", "AP50"))
    print(f"| recipe | {heads} | geometric mean | default |")
    print("| --- | " + " | ".join("---" for _ in sets for _ in range(2)) + " | --- | --- |")
    for recipe, (name, maps) in RECIPE_ROWS.items():
        pair = {r.align: r for r in rows if r.recipe == name and r.maps == maps and r.method == "cam"
                and not dict(r.options).get("classes")}
        if set(pair) != {"none", "measured"}:
            continue
        cells, ratios = [], []
        for s in sets:
            aligned, plain = results[s][pair["measured"].label], results[s][pair["none"].label]
            for m in ("AP", "AP50"):
                ratio = aligned.point[m] / plain.point[m] if plain.point[m] > 0 else float("nan")
                draws = [a[m] / b[m] for a, b in zip(aligned.draws, plain.draws) if b[m] > 0]
                low, high = interval(draws) if draws else (float("nan"), float("nan"))
                ratios.append(ratio)
                cells.append(f"{ratio:.2f}× [{low:.2f}, {high:.2f}]")
        mean = geometric_mean(ratios)
        chosen[recipe] = "measured" if mean >= 1.0 else "none"
        print(f"| {recipe} | {' | '.join(cells)} | {mean:.2f}× | {chosen[recipe]} |")
    return chosen
