"""Shared fixtures: paths to ../shared/data, tiny models, generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COCO_MINI = SHARED / "coco-mini"
WEIGHTS = SHARED / "weights"
COCO80 = WEIGHTS / "mobilenet_v2_coco80_linear.pth"
IMAGENET1001 = WEIGHTS / "mobilenet_v2_imagenet1001.pth"
VAL_ANN = COCO_MINI / "annotations" / "instances_val2017_mini.json"
VAL_IMAGES = COCO_MINI / "val2017"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if COCO80.is_file() and VAL_ANN.is_file():
        return
    skip = pytest.mark.skip(reason=f"real-data test: {SHARED} (COCO mini + shared weights) is missing")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
