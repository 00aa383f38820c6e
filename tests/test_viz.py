import cv2
import numpy as np
import pytest
from PIL import Image

from camloc.classes import COCO_CATEGORY_IDS
from camloc.viz import (
    PALETTE,
    cam_grid,
    class_color,
    class_hex,
    draw_boxes,
    format_score,
    label_size,
    multiclass_overlay,
    overlay_heatmap,
    text_color,
)
from tests.helpers import gradient_image


def test_overlay_blends_with_alpha():
    image = gradient_image(30, 40)
    heat = np.zeros((30, 40), np.float32)
    heat[10:20, 10:20] = 1.0
    assert np.array_equal(np.asarray(overlay_heatmap(image, heat, alpha=0.0)), image)
    full = np.asarray(overlay_heatmap(image, heat, alpha=1.0))
    assert full[15, 15].tolist() == [128, 0, 0]  # JET at 1.0 is dark red
    assert overlay_heatmap(image, np.zeros((3, 4)), 0.5).size == (40, 30)  # small maps are resized
    with pytest.raises(ValueError):
        overlay_heatmap(image, heat, alpha=2.0)


def test_every_coco_class_has_its_own_palette_colour():
    colours = [class_hex(c) for c in COCO_CATEGORY_IDS]
    assert len(set(colours)) == 80 and len(PALETTE) > max(COCO_CATEGORY_IDS)
    assert class_color(18) == tuple(int(class_hex(18)[i:i + 2], 16) for i in (1, 3, 5))
    lab = cv2.cvtColor(np.array([[class_color(c) for c in COCO_CATEGORY_IDS]], np.float32) / 255, cv2.COLOR_RGB2Lab)[0]
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(80) * 1e9
    assert distance.min() > 10 and lab[:, 0].max() < 85  # CIELAB ΔE: all 80 tell apart, none pale on white


def test_boxes_are_drawn_in_their_class_colour_with_a_black_halo():
    image = np.full((50, 60, 3), 255, np.uint8)
    out = np.asarray(draw_boxes(image, [{"bbox": [10, 20, 30, 20], "category_id": 18, "score": 0.9}], {18: "dog"}))
    assert out[39, 25].tolist() == list(class_color(18))  # bottom edge
    assert out[40, 25].tolist() == [0, 0, 0]  # halo just outside it
    assert out[30, 25].tolist() == [255, 255, 255]  # inside stays untouched


def tag_width(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    """Width of the label tag: the most pixels of ``colour`` in one row above the box (top at y = 150)."""
    rows = np.all(np.asarray(picture) == colour, axis=-1)[:148]
    return int(rows.sum(1).max())


def test_labels_scale_with_the_image_and_ground_truth_has_no_score():
    box = {"bbox": [40, 150, 100, 100], "category_id": 1}
    small = draw_boxes(np.zeros((300, 300, 3), np.uint8), [dict(box, score=0.5)], {1: "person"})
    large = draw_boxes(np.zeros((1200, 1200, 3), np.uint8), [dict(box, score=0.5)], {1: "person"})
    truth = draw_boxes(np.zeros((1200, 1200, 3), np.uint8), [box], {1: "person"})
    colour = class_color(1)
    assert tag_width(large, colour) > 2.5 * tag_width(small, colour)
    assert tag_width(truth, colour) < 0.8 * tag_width(large, colour)  # "person", not "person 0.500"
    assert label_size(640, 480) >= 20 and label_size(100, 80) == 12


def test_score_format_and_label_contrast():
    assert [format_score(s) for s in (0.86, 0.052349, 1.0, 0.000123456)] == ["0.860", "0.0523", "1.00", "0.000123"]
    assert text_color((230, 165, 0)) == (0, 0, 0) and text_color((0, 0, 221)) == (255, 255, 255)


def test_grid_and_multiclass_overlay_shapes():
    image = Image.fromarray(gradient_image(40, 80))
    heats = [np.random.default_rng(i).random((5, 5)) for i in range(5)]
    grid = cam_grid(image, heats, [f"class {i}" for i in range(5)], columns=3, tile=64)
    assert grid.width == 3 * 64 and (grid.height / 2 - 32) >= 12  # two rows of tiles, each with a title band
    stack = np.zeros((2, 40, 80), np.float32)
    stack[0, :, :40] = 1.0
    stack[1, :, 40:] = 1.0
    over = np.asarray(multiclass_overlay(image, stack, [1, 5], alpha=1.0, floor=0.0))
    assert over[5, 5].tolist() == list(class_color(1)) and over[5, 70].tolist() == list(class_color(5))


def test_many_boxes_best_on_top_and_labels_never_overlap():
    image = np.zeros((200, 300, 3), np.uint8)
    same = [40, 60, 120, 100]
    dets = [{"bbox": same, "category_id": c, "score": s} for c, s in ((3, 0.1), (1, 0.9), (2, 0.5))]
    out = np.asarray(draw_boxes(image, dets, {1: "a", 2: "b", 3: "c"}))
    present = {c: np.all(out == class_color(c), axis=-1) for c in (1, 2, 3)}
    assert present[1][159, 100]  # the bottom edge shows the best box, drawn last
    assert present[1][:60].any() and present[2][60:].any()  # best label above the box, the next one inside
    assert not present[3].any()  # no free place for the third label: left out; its box is under the others
