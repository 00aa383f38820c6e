"""The device map stage gives the CPU path's boxes (run here on the CPU; the same code runs on a GPU)."""

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from camloc.boxes import RECIPES, make_recipe
from camloc.boxes.device import histograms, otsu_levels, pack, unpack_stacked
from camloc.localize import Localizer
from camloc.pipeline.boxstage import BoxPipeline, BoxStage
from camloc.runtime.workerpool import OrderedPool
from tests.conftest import COCO80, VAL_IMAGES

DEVICE_RECIPES = [("seed", {}), ("seed", {"threshold": 0.3}), ("seed", {"mode": "largest"}), ("evidence", {}),
                  ("evidence", {"threshold": 0.6, "mode": "largest"}), ("multilevel", {}),
                  ("multilevel-flip", {"box_scale": "full"})]


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)),
              elements=st.sampled_from([0, 1, 2, 7, 100, 127, 128, 200, 254, 255]) | st.integers(0, 255)))
def test_otsu_levels_equal_opencv(u8):
    expected, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    assert otsu_levels(np.bincount(u8.ravel(), minlength=256)[None])[0] == int(expected)


def test_histograms_and_bit_packing_round_trip():
    rng = np.random.default_rng(0)
    u8 = torch.from_numpy(rng.integers(0, 256, (3, 5, 13), dtype=np.uint8))
    assert (histograms(u8) == np.stack([np.bincount(m.ravel(), minlength=256) for m in u8.numpy()])).all()
    masks = u8 > 100
    packed = pack(masks)
    assert packed.shape == (3, 5, 2) and (packed == np.packbits(masks.numpy(), axis=-1)).all()
    stacked = unpack_stacked(packed, 13)
    assert stacked.shape == (3, 6, 13) and (stacked[:, :5] == masks.numpy()).all() and not stacked[:, 5].any()


def adversarial_maps(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """Random raw maps: white noise (many tiny contours), smooth blobs, constant and all-negative maps."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(6):
        raw = rng.normal(size=(5, int(rng.integers(2, 12)), int(rng.integers(2, 12)))).astype(np.float32)
        raw[0] = 0.3  # constant: no foreground, the whole image
        raw[1] = -np.abs(raw[1])  # nothing left after ReLU
        size = (int(rng.integers(8, 90)), int(rng.integers(8, 90))) if i % 2 else (120, 160)
        cases.append((torch.from_numpy(raw), torch.from_numpy(rng.random(5).astype(np.float32)), size))
    return cases


def assert_same(cpu, device, exact_scores: bool):
    assert np.array_equal(cpu.class_index, device.class_index)
    assert np.array_equal(cpu.xywh, device.xywh)  # identical boxes
    if exact_scores:
        assert np.array_equal(cpu.score, device.score)
    else:  # seed: float64 summed-area sums instead of per-box float64 means
        np.testing.assert_allclose(device.score, cpu.score, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name,options", DEVICE_RECIPES)
def test_device_path_equals_the_cpu_path_on_adversarial_maps(name, options):
    recipe = make_recipe(name, classes="all", **options)
    for raw, probs, size in adversarial_maps(1):
        assert_same(recipe.boxes(raw, probs, size), recipe.device_boxes(raw, probs, size), name != "seed")


@pytest.mark.realdata
def test_device_path_equals_the_cpu_path_on_real_maps():
    localizer = Localizer.from_checkpoint(COCO80, device="cpu")
    for analysis in localizer.analyze(sorted(VAL_IMAGES.glob("*.jpg"))[:2], views=[(1.0, False), (1.0, True)]):
        top = torch.argsort(analysis.probs, descending=True)[:12]  # the classes a recipe would box
        raw, probs = analysis.raw_maps[top], analysis.probs[top]
        for name, options in DEVICE_RECIPES:
            recipe = make_recipe(name, classes="all", **options)
            assert_same(recipe.boxes(raw, probs, analysis.size), recipe.device_boxes(raw, probs, analysis.size),
                        name != "seed")


def test_which_recipes_have_a_device_path():
    assert {name for name, cls in RECIPES.items() if cls.on_device} == {"seed", "evidence", "multilevel",
                                                                         "multilevel-flip", "multilevel-tta"}


@pytest.mark.realdata
def test_the_eval_pipeline_traces_device_masks_in_worker_processes():
    localizer = Localizer.from_checkpoint(COCO80, device="cpu", box_scale="full")
    pixels = localizer.pixels(sorted(VAL_IMAGES.glob("*.jpg"))[:2])
    batch = localizer.analyze_batch(pixels)
    truth = [((0, np.array([[10.0, 20.0, 100.0, 80.0]])),)] * 2
    results = {}
    with OrderedPool(BoxStage(localizer.recipe), workers=1) as pool:
        for device_path in (False, True):
            pipeline = BoxPipeline(localizer.recipe, localizer.category_ids, localizer.supported,
                                   device_path=device_path)
            assert pipeline.path(batch) == ("traced" if device_path else "host")
            job = pipeline.job(0, [7, 9], batch, truth)
            assert (job.packed is not None) == device_path and (job.maps is None) == device_path
            found = [pipeline.finish(r) for r in pool.submit(job)] + [pipeline.finish(r) for r in pool.drain()]
            assert not pipeline.waiting and len(found) == 1
            results[device_path] = found[0]
    cpu, device = results[False], results[True]
    assert np.array_equal(cpu.detections.image, device.detections.image)
    assert set(cpu.detections.image.tolist()) == {7, 9}
    assert np.array_equal(cpu.detections.category, device.detections.category)
    assert np.array_equal(cpu.detections.bbox, device.detections.bbox)
    np.testing.assert_allclose(device.detections.score, cpu.detections.score, rtol=1e-9)
    assert all(np.array_equal(a, b) for a, b in zip(cpu.hits, device.hits)) and cpu.recognised == device.recognised
    assert [h.shape for h in cpu.hits] == [(1, 3, 100)] * 2


@pytest.mark.parametrize("name,options", [("seed", {}), ("multilevel", {})])
def test_a_batch_of_images_of_several_sizes_gives_each_image_its_own_device_maps(name, options):
    """The batched device stage (one call per distinct size, Otsu for every map at once) = image by image."""
    recipe = make_recipe(name, classes="all", **options)
    cases = adversarial_maps(2)
    cases = [(raw[:, :5, :6], probs, size) for raw, probs, size in cases] + [(cases[0][0][:0, :5, :6], None, (9, 9))]
    together = recipe.device_stage_batch([raw for raw, _, _ in cases], [size for _, _, size in cases])
    for (raw, _, size), maps in zip(cases, together):
        alone = recipe.device_stage(raw, size)
        assert maps.size == alone.size == size and maps.per_map == alone.per_map
        assert np.array_equal(maps.packed, alone.packed) and torch.equal(maps.raw, alone.raw)
