"""Connected-component boxes (torch labelling, any device) and grouped NMS, against OpenCV and torchvision."""

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torchvision.ops import batched_nms

import camloc.boxes.nms
from camloc.boxes.components import _boxes_from_labels, component_boxes, component_labels, sort_boxes
from camloc.boxes.nms import grouped_nms

FAST = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def opencv_reference(mask: np.ndarray, connectivity: int) -> list[tuple[int, ...]]:
    """Sorted ``(x0, y0, x1, y1, area)`` of each component, one OpenCV call per mask."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    return sorted((x, y, x + w - 1, y + h - 1, a) for x, y, w, h, a in stats[1:].tolist())


def rows(owner, boxes, area, mask_index):
    keep = owner == mask_index
    return [(*b, a) for b, a in zip(boxes[keep].tolist(), area[keep].tolist())]


masks_strategy = arrays(np.bool_, st.tuples(st.integers(1, 5), st.integers(1, 24), st.integers(1, 24)))


@FAST
@given(masks_strategy, st.sampled_from([4, 8]))
def test_both_backends_equal_opencv_per_mask(masks, connectivity):
    tensor = torch.from_numpy(masks)
    fast = component_boxes(tensor, connectivity)  # OpenCV, all masks in one call
    labelled = sort_boxes(*_boxes_from_labels(tensor, component_labels(tensor, connectivity)))  # the GPU path
    assert all(torch.equal(a, b) for a, b in zip(fast, labelled))
    for k, mask in enumerate(masks):
        assert rows(*fast, k) == opencv_reference(mask, connectivity)


def test_nested_rings_spirals_and_diagonals():
    """Shapes where label propagation needs many rounds or where 4- and 8-connectivity differ."""
    spiral = np.zeros((31, 31), bool)
    x0, y0, x1, y1 = 0, 0, 30, 30
    while x0 <= x1 and y0 <= y1:
        spiral[y0, x0:x1 + 1] = True
        spiral[y0:y1 + 1, x1] = True
        if y1 - y0 > 2:
            spiral[y1, x0 + 2:x1 + 1] = True
        if x1 - x0 > 4:
            spiral[y0 + 2:y1 + 1, x0 + 2] = True
        x0, y0, x1, y1 = x0 + 4, y0 + 4, x1 - 4, y1 - 4
    rings = np.zeros((31, 31), bool)
    for r in (2, 6, 10, 14):
        rings[15 - r, 15 - r:16 + r] = rings[15 + r, 15 - r:16 + r] = True
        rings[15 - r:16 + r, 15 - r] = rings[15 - r:16 + r, 15 + r] = True
    diagonal = np.eye(31, dtype=bool) | np.eye(31, k=2, dtype=bool)
    masks = np.stack([spiral, rings, diagonal, np.zeros((31, 31), bool), np.ones((31, 31), bool)])
    for connectivity in (4, 8):
        labelled = sort_boxes(*_boxes_from_labels(torch.from_numpy(masks),
                                                  component_labels(torch.from_numpy(masks), connectivity)))
        for k, mask in enumerate(masks):
            assert rows(*labelled, k) == opencv_reference(mask, connectivity)
    owner, boxes, _ = component_boxes(torch.from_numpy(masks))
    assert torch.equal(boxes[owner == 1], torch.tensor([[1, 1, 29, 29], [5, 5, 25, 25], [9, 9, 21, 21],
                                                        [13, 13, 17, 17]]))  # nested rings: a box each
    assert (owner == 3).sum() == 0 and boxes[owner == 4].tolist() == [[0, 0, 30, 30]]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        component_boxes(torch.zeros(1, 3, 3, dtype=torch.bool), 6)
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        component_boxes(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="too large to label"):
        component_labels(torch.zeros(1, 4096, 4096, dtype=torch.bool))
    empty = component_boxes(torch.zeros(0, 5, 5, dtype=torch.bool))
    assert [t.shape for t in empty] == [(0,), (0, 4), (0,)]


@settings(max_examples=120, derandomize=True, database=None, deadline=None)
@given(st.integers(0, 200), st.integers(1, 12), st.sampled_from([0.3, 0.5, 0.7]), st.integers(0, 2**31),
       st.booleans())
def test_grouped_nms_equals_torchvision(count, groups, iou, seed, small_chunks):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, (count, 2))
    corners = torch.from_numpy(np.concatenate([xy, xy + rng.integers(1, 25, (count, 2))], 1).astype(np.float64))
    scores = torch.from_numpy(rng.permutation(count).astype(np.float64))  # distinct: greedy NMS is unique
    group = torch.from_numpy(rng.integers(0, groups, count))
    chunk = camloc.boxes.nms.CHUNK_ELEMENTS
    camloc.boxes.nms.CHUNK_ELEMENTS = 50 if small_chunks else chunk  # many chunks of few groups
    try:
        kept = grouped_nms(corners, scores, group, iou)
    finally:
        camloc.boxes.nms.CHUNK_ELEMENTS = chunk
    expected = batched_nms(corners, scores, group, iou)
    expected = expected[torch.sort(-scores[expected], stable=True).indices]
    expected = expected[torch.sort(group[expected], stable=True).indices]
    assert torch.equal(kept, expected)
