"""Two checkouts of camloc measured side by side in one run: the command line, rounds in alternating
order, and the table of medians with after / before (for ``app_rerender.py`` and ``app_script_time.py``)."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Times = dict[str, float]


def parse_checkouts(description: str, rounds: int,
                    add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--before`` (required), ``--after`` (default: this checkout), ``--rounds`` and a script's own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (the app before a change)")
    parser.add_argument("--after", type=Path, default=ROOT, help="this checkout (default)")
    parser.add_argument("--rounds", type=int, default=rounds)
    if add_options is not None:
        add_options(parser)
    return parser.parse_args()


def side_by_side(args: argparse.Namespace, measure: Callable[[Path], Times], step_column: str,
                 digits: int, unit: str = " s") -> None:
    """Run ``measure(checkout)`` ``args.rounds`` times per checkout, the order alternating between rounds,
    and print each round, the load average and a table: median per step, after / before."""
    apps = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict[str, list[Times]] = {name: [] for name in apps}
    print(f"load average at the start: {os.getloadavg()[0]:.1f}", flush=True)
    for round_ in range(args.rounds):
        for name in (list(apps) if round_ % 2 == 0 else list(apps)[::-1]):
            results[name].append(measure(apps[name]))
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{t:.{digits}f}" for t in results[name][-1].values()),
                  flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}\n")
    print(f"| {step_column} | before ({args.before.name}) | after | after / before |")
    print("| --- | --- | --- | --- |")
    for step in results["after"][0]:
        before, after = (statistics.median(r[step] for r in results[name]) for name in ("before", "after"))
        print(f"| {step} | {before:.{digits}f}{unit} | {after:.{digits}f}{unit} | {after / before:.2f} |")
