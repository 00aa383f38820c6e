"""wsolevaluation's MaxBoxAccV2 / GT-known / Top-1 Loc on hand-worked maps."""

import numpy as np
import pytest
import torch

from camloc.evaluation.wsol import (
    CAM_THRESHOLDS,
    IOU_DELTAS,
    BoxAccuracy,
    image_hits,
    map_hits,
    multiple_iou,
    recognised_classes,
    resize_boxes,
    threshold_boxes,
)


def plateau(*regions: tuple[float, slice, slice]) -> np.ndarray:
    """A 224×224 map, zero but for ``value`` on each (rows, cols) region (later ones on top)."""
    heat = np.zeros((224, 224), np.float32)
    for value, rows, cols in regions:
        heat[rows, cols] = value
    return heat


def corners(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0, x1, y1]])


def test_iou_uses_inclusive_pixel_corners():
    # (60,50)-(120,100) covers 61×51 = 3111 pixels; the ground truth twice as wide covers 121×51 = 6171
    assert multiple_iou(corners(60, 50, 120, 100), corners(60, 50, 180, 100))[0, 0] == pytest.approx(3111 / 6171)
    assert multiple_iou(corners(0, 0, 9, 9), corners(10, 10, 20, 20))[0, 0] == 0.0
    # the ground truth is resized to 224×224 and truncated: x 10.9 → 2, x+w = 10.9+100 → 22
    assert resize_boxes(np.array([[10.9, 0, 100, 50]]), (224, 1120)).tolist() == [[2, 0, 22, 50]]


def test_a_plateau_is_found_at_every_threshold():
    heat = plateau((1.0, slice(50, 100), slice(60, 120)))
    owner, boxes = threshold_boxes(heat)
    assert owner.tolist() == list(range(100)) and (boxes == [60, 50, 120, 100]).all()
    exact = map_hits(heat, corners(60, 50, 120, 100))
    assert exact.shape == (3, 100) and exact.all()
    wide = map_hits(heat, corners(60, 50, 180, 100))  # IoU 0.504: right at δ = 30, 50, wrong at 70
    assert wide[0].all() and wide[1].all() and not wide[2].any()


def test_box_corners_are_clipped_to_the_last_pixel():
    heat = plateau((1.0, slice(100, 224), slice(0, 224)))
    _, boxes = threshold_boxes(heat)
    assert (boxes == [0, 100, 223, 223]).all()  # boundingRect gives x+w = 224, wsolevaluation clips to 223


def test_the_threshold_is_a_fraction_of_the_maximum_and_strict():
    # a core of 1.0 (u8 255) inside a ring of 0.5 (u8 127): u8 > int(τ·255) keeps the ring while int(τ·255) < 127,
    # i.e. for τ ≤ 0.49, and only the core from τ = 0.50 on
    heat = plateau((0.5, slice(40, 160), slice(40, 160)), (1.0, slice(90, 110), slice(90, 110)))
    owner, boxes = threshold_boxes(heat)
    assert owner.tolist() == list(range(100))
    assert (boxes[:50] == [40, 40, 160, 160]).all() and (boxes[50:] == [90, 90, 110, 110]).all()
    ring = map_hits(heat, corners(40, 40, 160, 160))
    core = map_hits(heat, corners(90, 90, 110, 110))
    assert ring[:, :50].all() and not ring[:, 50:].any()
    assert core[:, 50:].all() and not core[:, :50].any()
    # one threshold for all maps: each map is right at half the thresholds, never both at once
    accuracy = BoxAccuracy()
    accuracy.add(np.stack([ring, core]), [True, True])
    result = accuracy.result()
    assert result["MaxBoxAccV2"] == 0.5 and result["MaxBoxAcc"] == {"30": 0.5, "50": 0.5, "70": 0.5}
    assert result["best_threshold"] == {"30": 0.0, "50": 0.0, "70": 0.0}  # the first best threshold


def test_every_contour_counts_hole_borders_included():
    # a square with a hole: the hole's border (the ring pixels around it) is a box of its own
    heat = plateau((1.0, slice(20, 120), slice(20, 120)))
    heat[50:80, 60:90] = 0.0  # hole rows 50..79, cols 60..89 → border box x 59..90, y 49..80
    assert map_hits(heat, corners(59, 49, 90, 80)).all()
    assert map_hits(heat, corners(20, 20, 119, 119)).all()


def test_an_empty_map_gives_the_zero_box():
    owner, boxes = threshold_boxes(np.zeros((224, 224), np.float32))
    assert owner.tolist() == list(range(100)) and (boxes == 0).all()
    assert map_hits(np.zeros((224, 224), np.float32), corners(0, 0, 0, 0)).all()  # IoU 1 with a one-pixel box


def test_max_box_acc_v2_gt_known_and_top1():
    hit = np.ones((3, 100), bool)
    miss = np.zeros((3, 100), bool)
    half = np.zeros((3, 100), bool)
    half[0] = True  # right only at δ = 30
    accuracy = BoxAccuracy()
    accuracy.add(np.stack([hit, miss]), [False, True])
    accuracy.add(np.stack([half, hit]), [True, True])
    result = accuracy.result()
    # MaxBoxAcc: δ30 = 3/4, δ50 = δ70 = 2/4; V2 = mean = (0.75 + 0.5 + 0.5) / 3
    assert result["MaxBoxAcc"] == {"30": 0.75, "50": 0.5, "70": 0.5}
    assert result["MaxBoxAccV2"] == pytest.approx(1.75 / 3)
    assert result["GT-known Loc"] == 0.5
    assert result["Top-1 Loc"] == 0.25  # of the two maps right at δ 50, only the second is recognised
    assert result["num_maps"] == 4
    assert BoxAccuracy().result()["MaxBoxAccV2"] is None
    with pytest.raises(ValueError, match="recognition flags"):
        accuracy.add(np.stack([hit]), [True, False])


def test_recognised_means_among_the_top_n_for_n_present_classes():
    probs = torch.tensor([0.9, 0.1, 0.8, 0.3])
    assert recognised_classes(probs, [0]) == [True]
    assert recognised_classes(probs, [2]) == [False]  # top-1 is class 0
    assert recognised_classes(probs, [2, 3]) == [True, False]  # top-2 are classes 0 and 2
    assert recognised_classes(probs, []) == []


def test_image_hits_resizes_maps_and_boxes_to_224():
    # raw 4×4 map of an 80×160 (H×W) image: a hot cell in the top-left quarter
    raw = torch.zeros(1, 4, 4)
    raw[0, 0, 0] = 1.0
    hits = image_hits(raw, [np.array([[0.0, 0.0, 40.0, 20.0]])], (80, 160))
    assert hits.shape == (1, len(IOU_DELTAS), len(CAM_THRESHOLDS))
    assert hits[0, 0].any()  # some threshold boxes the hot corner at IoU ≥ 0.3
    far = image_hits(raw, [np.array([[120.0, 60.0, 40.0, 20.0]])], (80, 160))
    assert not far.any()
