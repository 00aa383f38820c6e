"""Box recipes: the registry, seed = the course recipe, and each new recipe's defining property."""

import cv2
import numpy as np
import pytest
import torch

from camloc.boxes import DEFAULT_RECIPE, RECIPES, Recipe, make_recipe, parse_class_selection, select_classes
from camloc.boxes.proposals import box_evidence, integral_images, level_boxes
from camloc.cam import normalize_maps
from tests.test_boxes import reference_boxes


def run(name: str, maps: np.ndarray, probs=None, **options):
    """Boxes of normalised maps ``(k, H, W)`` (given as raw maps: min-max leaves them unchanged)."""
    raw = torch.from_numpy(np.asarray(maps, np.float32))
    probs = torch.ones(len(raw)) if probs is None else torch.as_tensor(probs, dtype=torch.float32)
    return make_recipe(name, **options).boxes(raw, probs, tuple(raw.shape[-2:]))


def blob(height: int, width: int, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2))).astype(np.float32)


def test_registry_names_defaults_and_options():
    assert {"seed", "evidence", "multilevel", "instances"} <= set(RECIPES) and DEFAULT_RECIPE in RECIPES
    assert make_recipe("seed").parameters() == {"classes": "all", "flip": False, "tta": False, "thresholds": None,
                                                "threshold": "otsu", "mode": "all"}
    assert make_recipe("multilevel-tta").tta and make_recipe("multilevel-flip").flip
    assert DEFAULT_RECIPE == "multilevel-flip" and make_recipe(DEFAULT_RECIPE).default_align == "measured"
    assert not make_recipe("multilevel").flip and not make_recipe("multilevel").tta
    with pytest.raises(ValueError, match="tta must be True or False"):
        make_recipe("multilevel", tta="yes")
    assert make_recipe("multilevel", levels=[0.3, 0.6]).levels == (0.3, 0.6)
    assert make_recipe("seed", threshold=None, mode="largest").mode == "largest"  # None keeps the default
    recipe = make_recipe("evidence")
    assert make_recipe(recipe, classes="all") == make_recipe("evidence", classes="all")
    for bad, match in [(("nope",), "unknown box recipe"), (("seed",), "no option 'levels'"),
                       (("multilevel",), "levels"), (("seed",), "threshold"), (("instances",), "floor")]:
        options = {"seed": {}, "nope": {}}.get(bad[0], {})
        options = {"levels": (0.5,)} if match == "no option 'levels'" else options
        options = {"levels": (0.0, 2.0)} if match == "levels" else options
        options = {"threshold": "median"} if match == "threshold" else options
        options = {"floor": 1.5} if match == "floor" else options
        with pytest.raises(ValueError, match=match):
            make_recipe(*bad, **options)


def test_a_new_recipe_is_one_small_class():
    from dataclasses import dataclass

    from camloc import boxes as recipes

    @dataclass(frozen=True)
    class Whole(Recipe):
        def boxes(self, raw_maps, probs, size):
            k = len(raw_maps)
            return recipes.ScoredBoxes(np.arange(k), np.tile([0.0, 0.0, size[1], size[0]], (k, 1)),
                                       probs.double().numpy())

    recipes.register("whole-test")(Whole)
    try:
        found = run("whole-test", np.ones((2, 5, 7)), [0.3, 0.6])
        assert found.xywh.tolist() == [[0, 0, 7, 5]] * 2 and found.score.tolist() == pytest.approx([0.3, 0.6])
        with pytest.raises(ValueError, match="twice"):
            recipes.register("whole-test")(Whole)
    finally:
        del recipes.RECIPES["whole-test"]


def test_class_gating():
    probs = torch.tensor([[0.9, 0.05, 0.5, 0.2, 0.01]])
    def picked(selection):
        return torch.nonzero(select_classes(probs, selection)[0]).flatten().tolist()
    assert picked("all") == [0, 1, 2, 3, 4]
    assert picked("topk:2") == [0, 2]
    assert picked("prob:0.1") == [0, 2, 3]
    assert picked("topk:3,prob:0.3") == [0, 2]  # both: the intersection
    assert picked([4, 1]) == [1, 4]
    supported = torch.tensor([False, True, True, True, True])
    assert torch.nonzero(select_classes(probs, "topk:2", supported)[0]).flatten().tolist() == [2, 3]
    for bad in ["top:3", "topk:0", "topk:2.5", "prob:2", "some", "all,topk:3", "topk:2,topk:3", ""]:
        with pytest.raises(ValueError, match="class selection"):
            parse_class_selection(bad)
    with pytest.raises(ValueError, match="out of range"):
        select_classes(probs, [7])
    with pytest.raises(ValueError, match="non-negative"):
        parse_class_selection([-1])


@pytest.mark.parametrize("threshold,mode", [("otsu", "all"), (0.4, "all"), ("otsu", "largest")])
def test_seed_is_the_course_recipe_bit_for_bit(threshold, mode):
    rng = np.random.default_rng(5)
    raw = torch.from_numpy(rng.normal(size=(9, 7, 9)).astype(np.float32))
    probs = torch.from_numpy(rng.random(9).astype(np.float32))
    size = (61, 83)
    found = make_recipe("seed", threshold=threshold, mode=mode).boxes(raw, probs, size)
    heat = normalize_maps(raw, size).numpy()
    for k in range(len(raw)):
        mine = sorted(zip(map(tuple, found.xywh[found.class_index == k].astype(int).tolist()),
                          found.score[found.class_index == k].tolist()))
        boxes = reference_boxes(heat[k], threshold, mode == "largest")
        expected = sorted((b, heat[k, b[1]:b[1] + b[3], b[0]:b[0] + b[2]].mean(dtype=np.float64) * float(probs[k]))
                          for b in boxes)
        assert mine == expected  # boxes and scores, exactly


def test_two_separated_blobs_give_two_boxes():
    heat = np.maximum(blob(80, 160, 35, 40, 8, 8), blob(80, 160, 120, 40, 8, 8))[None]
    for name in ("evidence", "multilevel", "instances"):
        found = run(name, heat)
        top_two = found.xywh[np.argsort(-found.score)[:2]]
        centres = sorted(float(x + w / 2) for x, _, w, _ in top_two)
        assert abs(centres[0] - 35.5) <= 1 and abs(centres[1] - 120.5) <= 1, (name, centres)
        assert all(w < 60 for _, _, w, _ in top_two), name  # neither spans both blobs


def test_touching_peaks_are_split_by_the_instance_recipe():
    # two blobs that merge well above the floor: one box around both for multilevel, one per peak for instances
    heat = np.maximum(blob(90, 160, 60, 45, 18, 18), blob(90, 160, 100, 45, 18, 18))[None]
    heat /= heat.max()
    assert heat[0, 45, 80] > 0.5  # the saddle between the peaks is hot: they touch
    merged = run("multilevel", heat, levels=(0.2,))
    assert len(merged) == 1
    found = run("instances", heat, levels=(0.2,))
    assert len(found) == 2
    left, right = sorted(found.xywh.astype(int).tolist())
    whole = merged.xywh[0].astype(int).tolist()
    assert left[0] == whole[0] and right[0] + right[2] == whole[0] + whole[2]  # each extends to the floor
    assert abs(left[0] + left[2] - 80) <= 1 and abs(right[0] - 81) <= 1  # and ends at the saddle
    assert left[1] == right[1] == whole[1] and left[3] == right[3] == whole[3]  # same rows as the whole


def test_a_tiny_stray_contour_scores_below_the_main_blob():
    heat = 0.7 * blob(100, 140, 50, 50, 16, 16)
    heat[10:12, 120:122] = 1.0  # 4 hot pixels far from the object
    heat = heat[None]
    seed = run("seed", heat, threshold=0.5)
    stray = (seed.xywh[:, 0] >= 110)
    assert stray.any() and seed.score[stray].max() > seed.score[~stray].max()  # the course recipe ranks it first
    for name in ("evidence", "multilevel"):
        found = run(name, heat, threshold=0.5) if name == "evidence" else run(name, heat)
        stray = found.xywh[:, 0] >= 110
        assert stray.any() and found.score[stray].max() < 0.2 * found.score[~stray].max(), name


def test_nms_removes_duplicates_of_one_object():
    heat = blob(120, 120, 60, 60, 14, 14)[None]
    _, _, proposals = level_boxes((heat * 255).astype(np.uint8), make_recipe("multilevel").levels)
    assert len(proposals) == 9  # one nested box per level
    found = run("multilevel", heat)
    assert len(found) < len(proposals)
    corners = torch.tensor(np.c_[found.xywh[:, :2], found.xywh[:, :2] + found.xywh[:, 2:]])
    from torchvision.ops import box_iou
    overlap = box_iou(corners, corners).fill_diagonal_(0)
    assert overlap.max() <= 0.5
    assert (np.diff(found.score) <= 0).all()  # best first within the class


def test_evidence_is_share_times_soft_iou():
    heat = np.zeros((1, 10, 10), np.float32)
    heat[0, 2:6, 3:7] = 0.5  # total heat T = 8
    tables = integral_images(heat)
    boxes = np.array([[3, 2, 4, 4], [0, 0, 10, 10], [3, 2, 2, 2]])
    ev = box_evidence(tables, np.zeros(3, np.int64), boxes)
    # exact box: share 1, soft IoU 8/(16+8-8) = 0.5; whole image: share 1, soft IoU 8/100; quarter: share 1/4,
    # soft IoU 2/(4+8-2) = 0.2
    assert ev.tolist() == pytest.approx([np.sqrt(0.5), np.sqrt(0.08), np.sqrt(0.25 * 0.2)])
    assert box_evidence(integral_images(np.zeros((1, 4, 4))), np.zeros(1, np.int64), np.array([[0, 0, 4, 4]])) == 0


def test_level_boxes_equal_opencv_per_map_and_level():
    rng = np.random.default_rng(2)
    small = rng.random((3, 6, 8)).astype(np.float32)
    heat = np.stack([cv2.resize(m, (77, 53), interpolation=cv2.INTER_CUBIC) for m in small]).clip(0, 1)
    u8 = (heat * 255).astype(np.uint8)
    levels = (0.2, 0.5, 0.8)
    owner, level, boxes = level_boxes(u8, levels)
    for k in range(3):
        for j, t in enumerate(levels):
            mine = sorted(map(tuple, boxes[(owner == k) & (level == j)].tolist()))
            expected = sorted(b for b in reference_boxes(heat[k], t)) if (u8[k] >= np.ceil(t * 255)).any() else []
            assert mine == expected, (k, t)


def test_every_selected_class_gets_a_box_and_empty_input_gives_none():
    maps = np.zeros((3, 20, 30), np.float32)
    maps[1, 5:10, 5:10] = 1.0
    for name in RECIPES:
        found = run(name, maps, [0.2, 0.5, 0.9])
        assert set(found.class_index.tolist()) == {0, 1, 2}, name
        assert np.isfinite(found.score).all() and (found.xywh[:, 2:] >= 1).all(), name
        assert len(make_recipe(name).boxes(torch.zeros(0, 4, 4), torch.zeros(0), (20, 30))) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raw_maps_are_refused_by_every_recipe(bad):
    raw = torch.rand(2, 7, 7)
    raw[1, 3, 3] = bad
    for name in RECIPES:
        recipe = make_recipe(name)
        with pytest.raises(ValueError, match="NaN or infinite"):
            recipe.boxes(raw, torch.tensor([0.5, 0.5]), (28, 28))
        if recipe.on_device:
            with pytest.raises(ValueError, match="NaN or infinite"):
                recipe.device_boxes(raw, torch.tensor([0.5, 0.5]), (28, 28))


@pytest.mark.parametrize("name", ["evidence", "multilevel", "instances"])
def test_host_boxes_within_any_budget_are_the_boxes_of_all_maps_at_once(name):
    """The CPU box stage of a large image runs a map at a time and traces its level masks in groups (within the
    budget): the same boxes and scores as with room for everything."""
    recipe = make_recipe(name, box_scale="full")
    raw = torch.randn(6, 7, 9, generator=torch.Generator().manual_seed(3))
    probs = torch.rand(6, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.1
    size = (83, 127)
    roomy = recipe.boxes(raw, probs, size, budget=1 << 30)
    for budget in (1, size[0] * size[1] * recipe.host_bytes_per_pixel + 3 * 2 * (size[0] + 1) * size[1]):
        tight = recipe.boxes(raw, probs, size, budget=budget)
        assert tight.class_index.tolist() == roomy.class_index.tolist() and len(roomy) > 6
        assert np.array_equal(tight.xywh, roomy.xywh) and np.array_equal(tight.score, roomy.score)
