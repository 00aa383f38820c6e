import itertools

import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from camloc.viz import (
    GROUND_TRUTH_COLOR,
    LabelledBox,
    cam_grid,
    colorbar,
    colorize,
    distinct_colors,
    draw_boxes,
    draw_labelled,
    format_score,
    label_size,
    layout_tags,
    multiclass_overlay,
    overlay_heatmap,
    text_color,
)
from tests.helpers import count_tags, gradient_image

FIRST = distinct_colors(1)[0]


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


@pytest.mark.parametrize("count,least", [(2, 100), (4, 50), (8, 32), (12, 24), (16, 18)])
def test_colours_shown_together_are_far_apart_and_never_grey(count, least):
    """Issue 17: person and zebra were both purple side by side, handbag and cat greyish. The first ``count``
    colours (those of ``count`` classes shown together) are pairwise at least ``least`` apart in CIEDE2000."""
    colours = distinct_colors(count)
    lab = rgb2lab(np.array([colours], np.float64) / 255)[0]
    pairs = np.array(list(itertools.combinations(range(count), 2)))
    assert deltaE_ciede2000(lab[pairs[:, 0]], lab[pairs[:, 1]]).min() >= least
    assert (np.hypot(lab[:, 1], lab[:, 2]) >= 40).all() and (lab[:, 0] >= 35).all() and (lab[:, 0] <= 75).all()
    assert distinct_colors(count) == colours and distinct_colors(count + 3)[:count] == colours  # stable prefix
    assert distinct_colors(0) == [] and FIRST == (255, 0, 255)


def test_boxes_are_drawn_in_their_class_colour_with_a_black_halo():
    image = np.full((50, 60, 3), 255, np.uint8)
    out = np.asarray(draw_boxes(image, [{"bbox": [10, 20, 30, 20], "category_id": 18, "score": 0.9}], {18: "dog"}))
    assert out[39, 25].tolist() == list(FIRST)  # bottom edge
    assert out[40, 25].tolist() == [0, 0, 0]  # halo just outside it
    assert out[30, 25].tolist() == [255, 255, 255]  # inside stays untouched


def tag_width(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    """Width of the label tag: the most pixels of ``colour`` in one row above the box (top at y = 150)."""
    rows = np.all(np.asarray(picture) == colour, axis=-1)[:148]
    return int(rows.sum(1).max())


def test_labels_scale_with_the_image_and_ground_truth_has_no_score():
    box = {"bbox": [40, 150, 100, 100], "category_id": 1}
    small = draw_boxes(np.zeros((300, 300, 3), np.uint8), [dict(box, score=0.123)], {1: "person"})
    large = draw_boxes(np.zeros((1200, 1200, 3), np.uint8), [dict(box, score=0.123)], {1: "person"})
    truth = draw_boxes(np.zeros((1200, 1200, 3), np.uint8), [box], {1: "person"})
    assert tag_width(large, FIRST) > 2.5 * tag_width(small, FIRST)
    assert tag_width(truth, FIRST) < 0.8 * tag_width(large, FIRST)  # "GT1 person", not "1 person 0.123"
    assert label_size(640, 480) >= 20 and label_size(100, 80) == 12


def test_score_format_is_the_tables_and_label_contrast():
    """Issue 17: the table said 0.0003 where the picture said 0.000317. Both now write 3 significant digits
    the way the app's tables do (``%.3g`` in JavaScript; the browser test checks it against Chromium)."""
    values = (0.86, 0.052349, 1.0, 0.000317, 0.5625, 1.234e-8, 0.0)
    assert [format_score(s) for s in values] == ["0.86", "0.0523", "1", "0.000317", "0.563", "1.23e-8", "0"]
    assert text_color((230, 165, 0)) == (0, 0, 0) and text_color((0, 0, 221)) == (255, 255, 255)


def test_colorbar_runs_from_the_colormap_at_0_to_its_colour_at_1():
    bar = np.asarray(colorbar("viridis", width=200))
    ends = colorize(np.array([[0.0, 1.0]], np.float32), "viridis")[0]
    assert bar.shape[1] == 200 and bar[5, 12].tolist() == ends[0].tolist() and bar[5, 187].tolist() == ends[1].tolist()
    assert (bar[16:] < 100).all(-1).sum() > 20  # tick labels under the strip


def test_grid_and_multiclass_overlay_shapes():
    image = Image.fromarray(gradient_image(40, 80))
    heats = [np.random.default_rng(i).random((5, 5)) for i in range(5)]
    grid = cam_grid(image, heats, [f"class {i}" for i in range(5)], columns=3, tile=64)
    assert grid.width == 3 * 64 and (grid.height / 2 - 32) >= 12  # two rows of tiles, each with a title band
    stack = np.zeros((2, 40, 80), np.float32)
    stack[0, :, :40] = 1.0
    stack[1, :, 40:] = 1.0
    over = np.asarray(multiclass_overlay(image, stack, alpha=1.0, floor=0.0))
    first, second = distinct_colors(2)
    assert over[5, 5].tolist() == list(first) and over[5, 70].tolist() == list(second)


def test_many_boxes_best_on_top_and_every_box_tagged():
    """Issue 17: with many boxes the labels that found no free place were left out (3 labels for 10 boxes).
    Now every box keeps a tag: its label where one fits, else its key."""
    image = np.zeros((480, 640, 3), np.uint8)
    same = [80, 120, 240, 200]
    dets = [{"bbox": same, "category_id": c, "score": s} for c, s in ((3, 0.1), (1, 0.9), (2, 0.5))]
    out = np.asarray(draw_boxes(image, dets, {1: "a", 2: "b", 3: "c"}))
    colours = dict(zip((1, 2, 3), distinct_colors(3)))  # in the order of the scores
    assert out[318, 200].tolist() == list(colours[1])  # the bottom edge shows the best box, drawn last
    assert all(count_tags(out, colours[c]) == 1 for c in (1, 2, 3))  # one tag each, the third one too


def test_layout_tags_full_labels_where_free_keys_elsewhere_never_untagged():
    boxes = [LabelledBox((50, 50, 60, 40), (255, 0, 0), f"{i} cat 0.{9 - i}", str(i)) for i in range(1, 11)]
    layout = layout_tags(boxes, (300, 200), lambda text: (8 * len(text), 14))
    texts = [text for text, _ in layout]
    assert len(layout) == 10 and texts[0] == "1 cat 0.8"
    assert {text for text in texts if " " not in text} and all(t in (b.label, b.key) for t, b in zip(texts, boxes))
    tags = [tag for _, tag in layout]
    assert all(x0 >= 0 and y0 >= 0 and x1 <= 300 and y1 <= 200 for x0, y0, x1, y1 in tags)
    free = [not any(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]) for b in tags[:i])
            for i, a in enumerate(tags)]
    assert all(free[:8])  # 8 spots around one box: the first 8 tags share none


def test_a_crowded_key_goes_to_the_nearest_free_place_not_over_another_tag():
    """Boxes of a real photo (2 ground-truth, 13 predicted at 2× the feature grid) where every spot along box 11
    was taken: its key covered box 6's tag. It now goes to the nearest free place near its box."""
    bboxes = [(77, 25, 521, 370), (168, 199, 191, 153), (0, 51, 640, 343), (46, 86, 343, 309), (411, 51, 229, 326),
              (457, 86, 183, 137), (503, 240, 137, 103), (91, 206, 91, 120), (480, 103, 69, 103), (229, 137, 69, 51),
              (251, 309, 46, 51), (114, 274, 23, 34), (114, 223, 23, 34), (251, 154, 23, 17), (0, 411, 23, 69)]
    boxes = [LabelledBox(b, (255, 0, 0), f"{i} 0.00{i}", str(i)) for i, b in enumerate(bboxes, start=1)]
    layout = layout_tags(boxes, (640, 480), lambda text: (12 * len(text) + 8, 26))
    tags = [tag for _, tag in layout]
    assert all(text in (b.label, b.key) for (text, _), b in zip(layout, boxes))
    assert not any(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
                   for i, a in enumerate(tags) for b in tags[:i])
    for (x, y, w, h), (x0, y0, x1, y1) in zip(bboxes, tags):  # each tag near its box
        assert max(x - x1, x0 - (x + w), 0) <= 2 * (x1 - x0) and max(y - y1, y0 - (y + h), 0) <= 2 * (y1 - y0)


def test_ground_truth_and_detection_tags_do_not_cover_each_other():
    """Issue 17: ground-truth labels were hidden under prediction labels (two separate drawings)."""
    truth = LabelledBox((120, 120, 240, 160), GROUND_TRUTH_COLOR, "GT1", "GT1")
    dets = [LabelledBox((120, 120, 200 - 20 * i, 140), FIRST, f"{i} 0.{9 - i}", str(i)) for i in range(1, 4)]
    out = np.asarray(draw_labelled(np.zeros((480, 640, 3), np.uint8), [truth, *dets]))
    assert count_tags(out, GROUND_TRUTH_COLOR) == 1 and count_tags(out, FIRST) == 3
