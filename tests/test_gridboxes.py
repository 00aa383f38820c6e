"""Boxes at a multiple of the feature grid (camloc.boxes.grid), per image and for a whole batch."""

import numpy as np
import pytest
import torch

from camloc.boxes import make_recipe
from camloc.boxes.components import component_boxes
from camloc.boxes.contours import fraction_cut
from camloc.boxes.grid import grid_boxes, largest_per_map
from camloc.boxes.proposals import evidence
from camloc.cam import normalize_maps
from camloc.localize import Localizer
from tests.conftest import COCO80, VAL_IMAGES

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def two_blobs(height: int = 10, width: int = 12) -> torch.Tensor:
    """A raw map with two separated bumps: cells (2, 2) and (7, 9)."""
    raw = torch.full((height, width), -1.0)
    raw[2, 2] = 4.0
    raw[7, 9] = 3.0
    return raw


def test_two_blobs_give_two_boxes_scaled_to_the_image():
    raw = two_blobs()[None]
    found = grid_boxes(raw, torch.tensor([0.8]), torch.tensor([[300, 480]]), torch.tensor([0]), 4, (0.5,))
    assert len(found.score) == 2
    grid = normalize_maps(raw, (40, 48))[0]
    mask = (grid * 255).to(torch.uint8) > fraction_cut(0.5)
    _, boxes, _ = component_boxes(mask[None])
    stretch = torch.tensor([480 / 48, 300 / 40] * 2, dtype=torch.float64)
    expected = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1], 1).double() * stretch
    assert sorted(found.xywh.tolist()) == sorted(expected.tolist())
    centres = found.xywh[:, :2] + found.xywh[:, 2:] / 2
    assert sorted((int(x // 40), int(y // 30)) for x, y in centres.tolist()) == [(2, 2), (9, 7)]  # their cells
    assert found.score[0] > found.score[1]  # the stronger blob first


def test_scores_are_evidence_times_p_and_a_map_without_regions_gets_the_whole_image():
    raw = torch.stack([two_blobs(), torch.zeros(10, 12), -torch.ones(10, 12)])
    probs = torch.tensor([0.5, 0.25, 0.125])
    found = grid_boxes(raw, probs, torch.tensor([[100, 120]] * 3), torch.arange(3), 2, LEVELS)
    whole = found.map_index >= 1
    assert found.map_index[whole].tolist() == [1, 2]
    assert found.xywh[whole].tolist() == [[0.0, 0.0, 120.0, 100.0]] * 2
    assert found.score[whole].tolist() == [0.0, 0.0]  # no heat: no evidence
    heat = normalize_maps(raw[:1], (20, 24))[0].double().numpy()
    for (x, y, w, h), score in zip((found.xywh[~whole] / 5).round().long().tolist(), found.score[~whole].tolist()):
        inside = heat[y:y + h, x:x + w].sum()
        expected = evidence(np.array([inside]), np.array([heat.sum()]), np.array([[x, y, w, h]]))[0] * 0.5
        assert score == pytest.approx(expected, rel=1e-9)


def test_nms_keeps_the_best_of_overlapping_levels_within_a_group_only():
    raw = two_blobs()[None].repeat(2, 1, 1)
    separate = grid_boxes(raw, torch.tensor([0.9, 0.6]), torch.tensor([[100, 120]] * 2), torch.tensor([0, 1]), 4,
                          LEVELS)
    together = grid_boxes(raw, torch.tensor([0.9, 0.6]), torch.tensor([[100, 120]] * 2), torch.tensor([0, 0]), 4,
                          LEVELS)
    assert (separate.map_index == 0).sum() == (separate.map_index == 1).sum() > 1
    assert len(together.score) < len(separate.score)  # the second map's copies are suppressed by the first's


def test_largest_keeps_the_first_largest_region_of_each_mask():
    owner = torch.tensor([0, 0, 0, 2, 2])
    area = torch.tensor([5, 9, 9, 1, 3])
    assert largest_per_map(owner, area).tolist() == [1, 4]


def test_a_batch_gives_each_image_the_boxes_it_gets_alone():
    torch.manual_seed(0)
    raw = torch.randn(3, 5, 7, 7).cumsum(-1)
    probs = torch.rand(3, 6)
    gate = probs > 0.3
    sizes = [(70, 90), (120, 60), (33, 47)]
    classes = torch.tensor([0, 2, 3, 4, 5])
    for name, options in [("multilevel", {}), ("evidence", {}), ("evidence", {"threshold": 0.4, "mode": "largest"})]:
        recipe = make_recipe(name, classes="all", box_scale=3, **options)
        batch = recipe.batch_boxes(raw, probs, classes, gate, sizes)
        assert len(batch) and set(batch.image.tolist()) <= {0, 1, 2}
        assert np.isin(batch.class_index, classes.numpy()).all()
        assert gate[batch.image, batch.class_index].all()
        for b, size in enumerate(sizes):
            chosen = [k for k in classes.tolist() if gate[b, k]]
            rows = [classes.tolist().index(k) for k in chosen]
            alone = recipe.boxes(raw[b, rows], probs[b, chosen], size)
            mine = batch.of_image(b)
            assert mine.class_index.tolist() == np.asarray(chosen)[alone.class_index].tolist()
            assert np.array_equal(mine.xywh, alone.xywh) and np.array_equal(mine.score, alone.score)
            assert (mine.xywh[:, 0] + mine.xywh[:, 2] <= size[1] + 1e-9).all()


@pytest.mark.parametrize("scale", [0, 65, True, 2.5, "4"])
def test_box_scale_must_be_a_small_integer_or_none(scale):
    with pytest.raises(ValueError, match="box_scale must be an integer from 1 to 64"):
        make_recipe("multilevel", box_scale=scale)


def test_the_default_recipe_boxes_on_twice_the_grid_and_full_asks_for_the_image_resolution():
    assert make_recipe("multilevel-flip").box_scale == 2 and make_recipe("multilevel").box_scale is None
    assert make_recipe("multilevel-flip", box_scale="full").box_scale is None
    assert make_recipe("multilevel-flip").with_options(box_scale="full") == make_recipe("multilevel-flip",
                                                                                        box_scale="full")
    assert make_recipe("evidence", box_scale=3).with_options(box_scale="full").box_scale is None


def test_recipes_that_trace_at_full_resolution_refuse_box_scale():
    with pytest.raises(ValueError, match="instances traces its watershed"):
        make_recipe("instances", box_scale=4)
    with pytest.raises(ValueError, match="recipe 'seed' has no option 'box_scale'"):
        make_recipe("seed", box_scale=4)


@pytest.mark.realdata
def test_real_maps_boxed_on_the_grid_land_near_the_full_resolution_boxes():
    """On real photos the grid boxes are the full-resolution recipe's boxes up to the grid's quantisation:
    for most of the full-resolution top boxes a grid box overlaps it with IoU ≥ 0.7."""
    localizer = Localizer.from_checkpoint(COCO80, device="cpu")
    matched, total = 0, 0
    for analysis in localizer.analyze(sorted(VAL_IMAGES.glob("*.jpg"))[:3]):
        classes = torch.argsort(analysis.probs, descending=True)[:3].tolist()
        full = localizer.boxes(analysis, classes)
        grid = localizer.boxes(analysis, classes, localizer.recipe.with_options(box_scale=4))
        for k in range(len(classes)):
            for box in full.xywh[full.class_index == k][:3]:
                others = grid.xywh[grid.class_index == k]
                low = np.maximum(box[:2], others[:, :2])
                high = np.minimum(box[:2] + box[2:], others[:, :2] + others[:, 2:])
                inter = np.clip(high - low, 0, None).prod(-1)
                iou = inter / (box[2:].prod() + others[:, 2:].prod(-1) - inter)
                matched += bool(iou.max() >= 0.7)
                total += 1
    assert matched >= 0.8 * total
