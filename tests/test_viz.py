import numpy as np
import pytest
from PIL import Image

from camloc.viz import cam_grid, class_color, draw_boxes, multiclass_overlay, overlay_heatmap
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


def test_boxes_are_drawn_in_their_class_colour():
    image = np.zeros((50, 60, 3), np.uint8)
    out = np.asarray(draw_boxes(image, [{"bbox": [10, 20, 30, 20], "category_id": 18, "score": 0.9}], {18: "dog"}))
    assert out[39, 25].tolist() == list(class_color(18))  # bottom edge
    assert out[30, 25].tolist() == [0, 0, 0]  # inside stays untouched


def test_grid_and_multiclass_overlay_shapes():
    image = Image.fromarray(gradient_image(40, 80))
    heats = [np.random.default_rng(i).random((5, 5)) for i in range(5)]
    grid = cam_grid(image, heats, [f"class {i}" for i in range(5)], columns=3, tile=64)
    assert grid.size == (3 * 64, 2 * (32 + 16))
    stack = np.zeros((2, 40, 80), np.float32)
    stack[0, :, :40] = 1.0
    stack[1, :, 40:] = 1.0
    over = np.asarray(multiclass_overlay(image, stack, [0, 5], alpha=1.0, floor=0.0))
    assert over[5, 5].tolist() == list(class_color(0)) and over[5, 70].tolist() == list(class_color(5))
