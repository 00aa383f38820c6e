"""Fuzz: hostile maps and options at the maps → boxes boundary (:func:`camloc.boxes.contours.heatmaps_to_boxes`).

Contract: maps that are not real numbers in [0, 1] (NaN, inf, above 1, below 0, object, complex,
empty) and options outside their domain are a ``ValueError`` with a one-line message; valid maps
give exactly the boxes of the classic per-map OpenCV recipe, inside the image, every class at
least once, with mean heat in [0, 1].
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from camloc.boxes.contours import heatmaps_to_boxes
from tests.fuzz_support import assert_one_line, fuzz

SLACK = 1e-6  # values in (1, 1 + SLACK] (float rounding of a normalisation) may be accepted as 1


def reference_boxes(heat: np.ndarray, threshold, largest: bool) -> list[tuple[int, int, int, int]]:
    """The classic per-map recipe, written plainly: uint8, Otsu or ≥ f·255, external contours, boundingRect."""
    u8 = (heat.astype(np.float32) * np.float32(255)).astype(np.uint8)
    if threshold == "otsu":
        _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        mask = np.where(u8 >= np.float32(threshold) * np.float32(255), 255, 0).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if largest and contours:
        contours = [max(contours, key=cv2.contourArea)]
    return sorted(cv2.boundingRect(c) for c in contours) or [(0, 0, heat.shape[1], heat.shape[0])]


def valid_maps(maps) -> bool | None:
    """True/False where the contract is clear; None where values lie in (1, 1 + SLACK].
    Maps are float32 (as documented), so values are judged after that conversion."""
    array = np.asarray(maps) if not isinstance(maps, np.ndarray) else maps
    if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or 0 in array.shape:
        return False
    with np.errstate(over="ignore"):
        values = array.astype(np.float32).astype(np.float64)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1 + SLACK:
        return False
    return True if values.max() <= 1 else None


def valid_threshold(threshold) -> bool:
    if isinstance(threshold, str):
        if threshold.strip().lower() == "otsu":
            return True
        try:
            threshold = float(threshold)
        except ValueError:
            return False
    elif isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)):
        return False
    return math.isfinite(float(threshold)) and 0 < float(threshold) <= 1


def check(maps, threshold="otsu", mode="all") -> None:
    valid = valid_maps(maps)
    if valid is not False:
        valid = valid_threshold(threshold) and mode in ("all", "largest")
    try:
        found = heatmaps_to_boxes(maps, threshold, mode)
    except ValueError as exc:
        assert_one_line(exc)
        assert valid is not True, f"valid input refused: {exc}"
        return
    assert valid is not False, "invalid input accepted"
    array = np.asarray(maps, dtype=np.float32)
    array = array[None] if array.ndim == 2 else array
    num, height, width = array.shape
    xywh = found.xywh
    assert set(found.class_index.tolist()) == set(range(num))
    assert (xywh[:, :2] >= 0).all() and (xywh[:, 2:] >= 1).all()
    assert (xywh[:, 0] + xywh[:, 2] <= width).all() and (xywh[:, 1] + xywh[:, 3] <= height).all()
    assert np.isfinite(found.heat).all() and (found.heat >= 0).all() and (found.heat <= 1 + SLACK).all()
    fraction = "otsu" if str(threshold).strip().lower() == "otsu" else float(threshold)
    for k in range(num):
        boxes = sorted(map(tuple, xywh[found.class_index == k].tolist()))
        assert boxes == reference_boxes(np.minimum(array[k], 1.0), fraction, mode == "largest")


unit = st.floats(0, 1, width=32)
maps_strategy = st.one_of(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=7), elements=unit),
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_,
                                np.complex64]), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
               elements=st.floats(-0.01, 1.01)))
thresholds = st.one_of(st.just("otsu"), st.sampled_from(["OTSU ", " 0.5", "nan", "inf", "", "x", "0", "1"]),
                       st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.integers(-2, 2),
                       st.lists(st.floats(0, 1), max_size=2))
modes = st.one_of(st.sampled_from(["all", "largest"]), st.sampled_from(["ALL", "", "none"]), st.none(), st.integers())


@fuzz(200)
@given(maps_strategy, thresholds, modes)
def test_hostile_maps_and_options(maps, threshold, mode):
    check(maps, threshold, mode)


@fuzz(60)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)), elements=unit),
       st.sampled_from(["otsu", 0.2, 0.5, 1.0]), st.sampled_from(["all", "largest"]))
def test_valid_maps_give_the_reference_boxes(maps, threshold, mode):
    check(maps, threshold, mode)


WRAP = np.zeros((1, 8, 8), np.float32)
WRAP[0, 2:4, 2:4] = 1.0
WRAP[0, 5:7, 5:7] = 1.5  # 382 → 126 in uint8: the brightest blob would vanish
SPECIFIC = {
    "above-one-wraps": WRAP,
    "256/255": np.full((1, 4, 4), 256 / 255, np.float32),
    "nan": np.array([[[0.5, np.nan], [0.1, 0.2]]]),
    "inf": np.array([[[0.5, np.inf], [0.1, 0.2]]]),
    "-inf": np.array([[[0.5, -np.inf], [0.1, 0.2]]]),
    "negative": np.array([[[0.5, -0.5], [0.1, 0.2]]]),
    "object-numbers": np.array([[[0.5, 0.1], [0.1, 0.2]]], dtype=object),
    "object-mixed": np.array([[[0.5, "x"], [0.1, None]]], dtype=object),
    "complex": np.zeros((1, 2, 2), np.complex64),
    "strings": np.array([["0.5", "0.1"], ["0.1", "0.2"]]),
    "ragged-list": [[0.5, 0.1], [0.2]],
    "none": None,
    "empty": np.zeros((0, 4, 4), np.float32),
    "1-d": np.zeros(4, np.float32),
    "4-d": np.zeros((1, 1, 2, 2), np.float32),
}


@pytest.mark.parametrize("name", sorted(SPECIFIC))
def test_known_bad_maps_are_refused(name):
    with pytest.raises(ValueError) as error:
        heatmaps_to_boxes(SPECIFIC[name])
    assert_one_line(error.value)
