import cv2
import numpy as np
import pytest

from camloc.boxes.contours import box_means, foreground, heatmaps_to_boxes, parse_threshold, to_uint8


def reference_boxes(heat: np.ndarray, threshold="otsu", largest=False) -> list[tuple[int, int, int, int]]:
    """The classic per-map recipe, written plainly: uint8, Otsu, external contours, boundingRect."""
    u8 = np.uint8(255 * heat)
    if threshold == "otsu":
        _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        mask = np.where(u8 >= threshold * 255, 255, 0).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if largest and contours:
        contours = [max(contours, key=cv2.contourArea)]
    return sorted(cv2.boundingRect(c) for c in contours) or [(0, 0, heat.shape[1], heat.shape[0])]


def test_known_blobs_come_back_exactly():
    heat = np.zeros((3, 60, 80), np.float32)
    heat[0, 10:20, 5:25] = 1.0  # x=5, y=10, w=20, h=10
    heat[0, 40:58, 50:79] = 0.7
    heat[1, 0:60, 0:3] = 0.9  # touches the bottom row: must not merge with class 2's top row
    heat[2, 0:5, 0:80] = 1.0
    cv2.ellipse(heat[2], (40, 35), (10, 4), 0, 0, 360, 0.8, -1)  # x 30..50, y 31..39
    found = heatmaps_to_boxes(heat)
    boxes = {k: sorted(map(tuple, found.xywh[found.class_index == k].tolist())) for k in range(3)}
    assert boxes[0] == [(5, 10, 20, 10), (50, 40, 29, 18)]
    assert boxes[1] == [(0, 0, 3, 60)]
    assert boxes[2] == [(0, 0, 80, 5), (30, 31, 21, 9)]
    largest = heatmaps_to_boxes(heat, mode="largest")
    assert largest.class_index.tolist() == [0, 1, 2]
    assert largest.xywh.tolist() == [[50, 40, 29, 18], [0, 0, 3, 60], [0, 0, 80, 5]]


def test_degenerate_maps_give_one_full_image_box():
    maps = np.stack([np.zeros((4, 6)), np.full((4, 6), 0.5), np.ones((4, 6))]).astype(np.float32)
    found = heatmaps_to_boxes(maps)
    assert found.class_index.tolist() == [0, 1, 2]
    assert found.xywh.tolist() == [[0, 0, 6, 4]] * 3
    assert np.isfinite(found.heat).all()
    tiny = heatmaps_to_boxes(np.ones((1, 1, 1), np.float32))
    assert tiny.xywh.tolist() == [[0, 0, 1, 1]] and tiny.heat.tolist() == [1.0]


@pytest.mark.parametrize("threshold", ["otsu", 0.3, 0.75])
@pytest.mark.parametrize("largest", [False, True])
def test_equals_the_per_map_recipe_on_random_smooth_maps(threshold, largest):
    rng = np.random.default_rng(1)
    raw = rng.random((12, 9, 13)).astype(np.float32)
    heat = np.stack([cv2.resize(m, (97, 71), interpolation=cv2.INTER_CUBIC) for m in raw]).clip(0, None)
    heat = (heat - heat.min((1, 2), keepdims=True)) / np.ptp(heat, (1, 2), keepdims=True)
    found = heatmaps_to_boxes(heat, threshold, "largest" if largest else "all")
    for k in range(len(heat)):
        ours = sorted(map(tuple, found.xywh[found.class_index == k].tolist()))
        assert ours == reference_boxes(heat[k], threshold, largest), k
    assert len(found) > len(heat) or largest  # several blobs per map: the comparison is not trivial


def test_otsu_foreground_equals_opencv_per_map():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (5, 30, 40), dtype=np.uint8)
    u8[1] = 7
    mask = foreground(u8, "otsu")
    for k in range(5):
        _, expected = cv2.threshold(u8[k], 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        assert (mask[k] == (expected > 0)).all()


def test_box_means_and_uint8_truncation():
    rng = np.random.default_rng(3)
    maps = rng.random((2, 10, 12)).astype(np.float32)
    xywh = np.array([[1, 2, 3, 4], [0, 0, 12, 10], [11, 9, 1, 1]])
    owner = np.array([0, 1, 1])
    expected = [maps[0, 2:6, 1:4].mean(dtype=np.float64), maps[1].mean(dtype=np.float64), maps[1, 9, 11]]
    np.testing.assert_allclose(box_means(maps, owner, xywh), expected, rtol=1e-12)
    assert to_uint8(np.array([0.999, 1.0, 0.5])).tolist() == [254, 255, 127]


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        parse_threshold("median")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        parse_threshold(1.5)
    with pytest.raises(ValueError, match="box mode"):
        heatmaps_to_boxes(np.zeros((1, 3, 3)), mode="biggest")
    with pytest.raises(ValueError, match="maps must be"):
        heatmaps_to_boxes(np.zeros((1, 0, 3)))
