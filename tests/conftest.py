"""Shared fixtures: paths to ../shared/data, tiny models, generated images."""

from __future__ import annotations

import os
import shutil
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
#: The shared COCO-80 weights' measured map geometries (feature layer and fused LayerCAM's layers at 336, 448 and
#: 560 px), as :mod:`camloc.models.geometry.store` keeps them: made by measuring, not by hand.
KEPT_GEOMETRIES = ROOT / "tests" / "data" / "geometry"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if COCO80.is_file() and VAL_ANN.is_file():
        return
    skip = pytest.mark.skip(reason=f"real-data test: {SHARED} (COCO mini + shared weights) is missing")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _geometry_cache(tmp_path_factory: pytest.TempPathFactory):
    """Measured map geometries are kept on disk in the test session's own folder (shared by its xdist workers and
    the CLIs they start), never in the user's cache. It starts with :data:`KEPT_GEOMETRIES`: the shared COCO-80
    weights' geometries as camloc measured them (``test_the_kept_geometries_are_what_measuring_gives`` checks them;
    a file of another measurement version is ignored and measured again)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "camloc-cache"
    (folder / "geometry").mkdir(parents=True, exist_ok=True)
    for kept in KEPT_GEOMETRIES.glob("*.json"):  # each file whole or not at all (workers start together)
        partial = folder / "geometry" / f"{kept.stem}.{os.getpid()}.part"
        shutil.copyfile(kept, partial)
        os.replace(partial, folder / "geometry" / kept.name)
    before = os.environ.get("CAMLOC_CACHE_DIR")
    os.environ["CAMLOC_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("CAMLOC_CACHE_DIR", None)
    else:
        os.environ["CAMLOC_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def coco80_geometry(_geometry_cache) -> None:
    """The shared COCO-80 weights' map geometries at every input size their views use (448 px and the TTA scales;
    the feature layer and fused LayerCAM's layers) at hand — kept (:data:`KEPT_GEOMETRIES`) or else measured once
    per test session — before an app test's own time limit starts."""
    from camloc.localize import Localizer

    for method in ("cam", "layercam-fused"):
        localizer = Localizer.from_checkpoint(COCO80, device="cpu", tta=True, align="measured", method=method)
        localizer.measure_geometries(localizer.unmeasured_geometries())


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
