"""Shared fixtures: paths to ../shared/data, tiny models, generated images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Under ``pytest -n N`` each worker gets its share of the cores for torch's (OpenMP) threads — and so do the CLIs
#: and torchrun processes it starts, which inherit the variable. Without it, N workers × all cores' threads
#: oversubscribe the machine: on 2 cores with ``-n 2`` a set of training tests took 1.48× as long.
#: Set here (not by the user): the app server of the browser tests runs as a user would run it, without it.
THREAD_BUDGET_SET_HERE = bool(os.environ.get("PYTEST_XDIST_WORKER_COUNT")) and "OMP_NUM_THREADS" not in os.environ
if THREAD_BUDGET_SET_HERE:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import torch  # noqa: E402  (after the thread budget: OpenMP reads it once)

if THREAD_BUDGET_SET_HERE:  # in case torch was imported before this file
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


def user_environment(**changes: str) -> dict[str, str]:
    """The environment for a process started as a user would start it (the app server): this one's, without the
    thread budget set above, with ``changes``."""
    return {**{k: v for k, v in os.environ.items() if not (THREAD_BUDGET_SET_HERE and k == "OMP_NUM_THREADS")},
            **changes}


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
