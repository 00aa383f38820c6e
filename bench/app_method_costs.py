"""What each map method costs in the app, in CAM passes: the figures its method picker shows.

Times one view of the image (TTA-CAM: its six views) of every method the app offers, computed as the
app computes it — with the app's options, every class at once, or the class shown for a method that
backpropagates through the network for each class — against one CAM pass, on the shared COCO-80
MobileNetV2 (input 448) and a 640×480 COCO photo. Rounds interleave the methods, so a change of
the machine's load touches them all alike; the figure is the median over the rounds of each
method's time over CAM's in the same round. Writes ``app_pages/method_costs.json``.

    PYTHONPATH=. .venv/bin/python bench/app_method_costs.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from app_pages.methods import CAM, COSTS_FILE, METHODS, AppMethod
from camloc.cam import make_method
from camloc.localize import Localizer
from camloc.models import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO80 = DATA / "weights" / "mobilenet_v2_coco80_linear.pth"
PHOTO = DATA / "coco-mini" / "val2017" / "000000104455.jpg"  # a zebra, its top class (index 22)
FOCUS = 22


def seconds(method: AppMethod, model, meta) -> float:
    """One computation of ``method``'s views as the app asks for them (a fresh Localizer: nothing cached)."""
    localizer = Localizer(model, meta, method=make_method(method.name, **method.options), tta=method.tta, device="cpu")
    views = localizer.views("seed")  # one view; TTA-CAM's six
    start = time.perf_counter()
    localizer.analyze([PHOTO], method.classes(meta["num_classes"], FOCUS), views=views)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not COCO80.is_file():
        sys.exit("error: needs ../shared/data (the COCO-80 weights, coco-mini)")
    model, meta = load_model(COCO80)
    load = [os.getloadavg()[0]]
    for method in METHODS.values():  # warm up every code path once
        seconds(method, model, meta)
    others = {label: m for label, m in METHODS.items() if m != CAM}  # CAM: the unit
    ratios: dict[str, list[float]] = {label: [] for label in others}
    for round_ in range(args.rounds):
        cam = statistics.median(seconds(CAM, model, meta) for _ in range(3))
        for label, method in others.items():
            ratios[label].append(seconds(method, model, meta) / cam)
        print(f"round {round_ + 1}: CAM {cam:.3f} s; " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ratios.items()),
              flush=True)
    load.append(os.getloadavg()[0])
    cost = {label: round(statistics.median(values), 2) for label, values in ratios.items()}
    measured = (f"by bench/app_method_costs.py on {meta['arch']} (input {meta['input_size']}), a 640×480 photo, "
                f"{torch.get_num_threads()} CPU threads, load {load[0]:.1f}–{load[1]:.1f}, median of {args.rounds}")
    COSTS_FILE.write_text(json.dumps({"measured": measured, "cost": cost}, indent=1, ensure_ascii=False) + "\n")
    print(f"\n| method | CAM passes ({'a view; TTA-CAM its six'}) |\n| --- | --- |")
    for label, value in cost.items():
        print(f"| {label} | {value} |")
    print(f"\nwrote {COSTS_FILE} ({measured})")


if __name__ == "__main__":
    main()
