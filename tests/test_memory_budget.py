"""Memory is a budget: the box stage's device work runs in chunks that fit it, with the same boxes as all at once,
and a batch of 64 photos with every class gated stays within a stated peak."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from camloc.boxes import make_recipe
from camloc.boxes.grid import grid_boxes, grid_bytes
from camloc.runtime.memory import CPU_BUDGET, MIN_BUDGET, Halving, chunks, memory_budget, parse_memory
from tests.conftest import ROOT

#: What the device stage of 64 640×480 images with all 80 classes may add to the process's peak: the budget (with
#: a tenth for the allocator's slack) and its output, the packed masks (a bit per pixel). Before the budget it held
#: every map at full resolution as float32, uint8, int64 and float64 tables at once: about 33 GB.
PACKED = 64 * 80 * 480 * 640 // 8
PEAK_LIMIT = int(1.1 * CPU_BUDGET) + PACKED


def test_memory_sizes_parse_and_hostile_ones_are_refused():
    assert parse_memory("4GiB") == 4 << 30 and parse_memory("512 MiB") == 512 << 20
    assert parse_memory("2e9") == 2_000_000_000 and parse_memory(1 << 30) == 1 << 30
    for bad in ("", "lots", "-1G", "4 GiB please", "1KiB", "nan", "1e999"):
        with pytest.raises(ValueError, match="memory must"):
            parse_memory(bad)
    assert memory_budget("cpu") == CPU_BUDGET and memory_budget("cpu", 123 << 20) == 123 << 20


@given(count=st.integers(0, 500), per_item=st.integers(0, 10**9), budget=st.integers(MIN_BUDGET, 10**10))
def test_chunks_cover_every_item_once_within_the_budget(count, per_item, budget):
    spans = list(chunks(count, per_item, budget))
    assert [i for s in spans for i in range(s.start, s.stop)] == list(range(count))
    assert all(s.stop - s.start == 1 or (s.stop - s.start) * per_item <= budget for s in spans)


def random_maps(seed: int, count: int, grid=(7, 9)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(count, *grid, generator=generator)
    maps[::3] = maps[::3].abs() ** 3  # peaked maps beside noisy ones
    return maps


@pytest.mark.parametrize("name", ["seed", "multilevel"])
def test_the_device_stage_in_chunks_gives_the_boxes_of_one_chunk(name):
    recipe = make_recipe(name, classes="all")
    raw = [random_maps(i, k) for i, k in enumerate([5, 3, 6])]
    sizes = [(61, 83), (61, 83), (40, 52)]
    probs = torch.rand(6, dtype=torch.float64)
    whole = recipe.device_stage_batch(raw, sizes, budget=1 << 40)
    small = recipe.device_stage_batch(raw, sizes, budget=2 * 61 * 83 * 30)  # ~2 maps a chunk
    for one, many, size in zip(whole, small, sizes):
        assert np.array_equal(one.packed, many.packed)
        traced = recipe.trace(one.packed, size[1])
        tight = type(many)(many.size, many.packed, many.per_map, many.raw, 3 * (size[0] + 1) * (size[1] + 1) * 40)
        a = recipe.finish(one, *traced, probs[:len(one.raw)])
        b = recipe.finish(tight, *traced, probs[:len(one.raw)])
        assert np.array_equal(a.xywh, b.xywh) and np.array_equal(a.class_index, b.class_index)
        assert np.array_equal(a.score, b.score)


def test_grid_boxes_in_chunks_equal_all_at_once():
    raw = random_maps(4, 40)
    probs = torch.rand(40, dtype=torch.float64)
    sizes = torch.tensor([[480, 640]] * 20 + [[300, 200]] * 20)
    group = torch.arange(40) // 2  # two maps per group: NMS across them, never split by a chunk
    budget = 5 * grid_bytes((28, 36), 3)  # five maps a chunk: a group would straddle chunks 1 and 2
    assert len(list(chunks(40, grid_bytes((28, 36), 3), budget))) == 8
    whole = grid_boxes(raw, probs, sizes, group, 4, (0.2, 0.5, 0.8), budget=1 << 40)
    parts = grid_boxes(raw, probs, sizes, group, 4, (0.2, 0.5, 0.8), budget=budget)
    for field in ("map_index", "xywh", "score"):
        assert torch.equal(getattr(whole, field), getattr(parts, field))


def test_halving_keeps_the_smaller_size_and_names_what_does_not_fit():
    said, seen = [], []

    def work(part):
        seen.append(len(part))
        if len(part) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return sum(part)

    halving = Halving(8, say=said.append)
    assert sum(halving.run(list(range(10)), work)) == 45
    assert seen == [8, 4, 2, 2, 2, 2, 2] and halving.size == 2 and len(said) == 2
    with pytest.raises(RuntimeError, match="item 7 does not fit in device memory even alone"):
        Halving(2, say=said.append).run([7], lambda part: work(part * 9), name=lambda i: f"item {i}")
    with pytest.raises(ValueError, match="not memory"):  # any other failure is itself
        Halving(4).run([1, 2], lambda part: (_ for _ in ()).throw(ValueError("not memory")))


PEAK_SCRIPT = """
import json, resource, sys, torch
from camloc.boxes import make_recipe
torch.manual_seed(0)
count, classes = int(sys.argv[1]), int(sys.argv[2])
budget = None if sys.argv[3] == "default" else int(sys.argv[3])
recipe = make_recipe("seed", classes="all")
probs = torch.rand(classes, dtype=torch.float64)  # drawn first: the same for every count
raw = [torch.randn(classes, 15, 20) for _ in range(count)]
sizes = [(480, 640)] * count
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
maps = recipe.device_stage_batch(raw, sizes, budget)
boxes = []
for image_maps in maps:
    found = recipe.finish(image_maps, *recipe.trace(image_maps.packed, 640), probs)
    boxes.append([found.class_index.tolist(), found.xywh.tolist(), found.score.tolist()])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
json.dump({"before": before, "peak": peak, "boxes": boxes[:2]}, sys.stdout)
"""


def stage_peak(count: int, classes: int, budget: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(count), str(classes), budget], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_64_photos_with_every_class_gated_stay_within_the_peak():
    """The device stage (seed: Otsu, full resolution) of 64 images of 640×480 with all 80 classes, traced and
    scored, on the CPU with the default budget: it adds less than :data:`PEAK_LIMIT` (1.29 GiB) to the process's
    peak, and gives the boxes one unchunked chunk gives (compared on two images, which fit unchunked)."""
    chunked = stage_peak(64, 80, "default")
    added = chunked["peak"] - chunked["before"]
    assert added < PEAK_LIMIT, f"the stage added {added / 2**30:.2f} GiB"
    unchunked = stage_peak(2, 80, str(1 << 40))
    assert chunked["boxes"] == unchunked["boxes"]
