"""Metrics fed a part at a time (as `python -m eval` finishes its batches) equal the one-call metrics, bit for bit."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camloc.evaluation import Detections, EvaluationError, GroundTruth, localization_metrics
from camloc.evaluation.report import MetricsStream
from tests.test_evaluation import random_set


def parts_of(gt: dict, dets: list, cuts: list[int]) -> list[tuple[list[int], list[dict]]]:
    """The images (in id order) cut into consecutive parts at ``cuts``, each with its images' detections listed in
    the images' order (as a run's batches list them)."""
    ids = sorted(im["id"] for im in gt["images"])
    bounds = [0, *sorted({min(max(c, 0), len(ids)) for c in cuts}), len(ids)]
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        own = set(ids[lo:hi])
        parts.append((ids[lo:hi], sorted((d for d in dets if d["image_id"] in own), key=lambda d: d["image_id"])))
    return parts


def streamed(gt: dict, parts: list[tuple[list[int], list[dict]]]) -> dict:
    stream = MetricsStream(gt)
    for ids, dets in parts:
        stream.add(dets, ids)
    return stream.result()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 25), max_size=6), order=st.randoms())
def test_streamed_metrics_equal_one_call(seed, cuts, order):
    gt, dets = random_set(seed)
    parts = parts_of(gt, dets, cuts)
    # the order a run lists them: its images' order, each image's detections in their own order
    in_order = sorted((d for _, part in parts for d in part), key=lambda d: d["image_id"])
    whole = localization_metrics(gt, in_order)
    order.shuffle(parts)  # the order parts finish in must not matter
    assert streamed(gt, parts) == whole


def test_streamed_metrics_equal_one_call_with_more_than_100_detections_per_group():
    gt, dets = random_set(3, n_img=6, n_cat=2, max_det=400)
    parts = parts_of(gt, dets, [1, 4])
    in_order = sorted((d for _, part in parts for d in part), key=lambda d: d["image_id"])
    assert streamed(gt, parts) == localization_metrics(gt, in_order)


def test_an_image_in_two_parts_or_a_stray_detection_is_refused():
    gt, dets = random_set(1, n_img=4)
    ids = sorted(im["id"] for im in gt["images"])
    stream = MetricsStream(gt)
    stream.add([d for d in dets if d["image_id"] == ids[0]], [ids[0]])
    with pytest.raises(EvaluationError, match="added twice"):
        stream.add([], [ids[0]])
    with pytest.raises(EvaluationError, match="outside this part"):
        stream.add([d for d in dets if d["image_id"] == ids[2]], [ids[1]])


def test_a_subset_of_images_equals_one_call_on_it():
    gt, dets = random_set(7)
    ids = sorted(im["id"] for im in gt["images"])[::2]
    stream = MetricsStream(GroundTruth(gt), ids)
    for image_id in ids:
        stream.add(Detections([d for d in dets if d["image_id"] == image_id]), [image_id])
    whole = localization_metrics(gt, [d for i in ids for d in dets if d["image_id"] == i], ids)
    assert len(ids) > 1
    assert stream.result() == whole
    assert np.isfinite(whole["coco_stats"]).all()


def test_parts_added_out_of_order_rank_ties_as_one_call_does():
    """Equal scores on two images: COCO ranks the lower image id first (here a true positive before a false one,
    AP 1.0 rather than 0.5), whatever order the parts came in."""
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 7, "name": "c"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 50, 50], "area": 2500}]}
    hit = {"image_id": 1, "category_id": 7, "bbox": [10, 10, 50, 50], "score": 0.5}
    miss = {"image_id": 2, "category_id": 7, "bbox": [10, 10, 50, 50], "score": 0.5}
    stream = MetricsStream(gt)
    stream.add([miss], [2])
    stream.add([hit], [1])
    result = stream.result()
    assert result["coco"] == localization_metrics(gt, [hit, miss])["coco"]
    assert result["coco"]["AP50"] == pytest.approx(1.0)  # not 0.5: the true positive ranks first


def test_the_result_of_the_images_read_leaves_the_others_out():
    """A run leaves out the images it could not read: their ground truth no longer counts."""
    gt, dets = random_set(11, n_img=8)
    ids = sorted(im["id"] for im in gt["images"])
    read = ids[:5]
    stream = MetricsStream(gt)
    for image_id in read:
        stream.add([d for d in dets if d["image_id"] == image_id], [image_id])
    kept = sorted((d for d in dets if d["image_id"] in read), key=lambda d: d["image_id"])
    assert stream.result(read) == localization_metrics(gt, kept, read)
    assert stream.result(read) != stream.result()
