"""Fuzz: hostile ground truth, detections and parameters at the evaluator boundary.

Contract: an input is refused with an :class:`EvaluationError` (one line) exactly when it breaks the
COCO format as specified below (:func:`valid_gt`, :func:`valid_detections`); an accepted input gives
pycocotools' 12 numbers, bit for bit. Ids are integers or the input is refused — never rounded.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from camloc.evaluation import EvaluationError, classification_ap, coco_evaluate, localization_metrics, voc_map
from tests.fuzz_support import assert_one_line, fuzz

INT64 = 2**63


# ----------------------------------------------------------------------------------------------
# the specification, written independently of camloc
# ----------------------------------------------------------------------------------------------

def is_id(value) -> bool:
    return type(value) is int and -INT64 <= value < INT64


def is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def is_box(value, ground_truth: bool) -> bool:
    if not (isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)):
        return False
    return not ground_truth or (value[2] >= 0 and value[3] >= 0)


def unique_ids(entries: list) -> bool:
    ids = [e["id"] for e in entries]
    return len(set(ids)) == len(ids)


def valid_gt(gt) -> bool:
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        return False
    if not gt["categories"]:
        return False
    for key in ("images", "categories"):
        if not all(isinstance(e, dict) and is_id(e.get("id")) for e in gt[key]) or not unique_ids(gt[key]):
            return False
    if not all(isinstance(c.get("name", ""), str) for c in gt["categories"]):
        return False
    for a in gt["annotations"]:
        if not (isinstance(a, dict) and all(is_id(a.get(k)) for k in ("id", "image_id", "category_id"))
                and is_box(a.get("bbox"), True)):
            return False
        if "area" in a and not (is_number(a["area"]) and a["area"] >= 0):
            return False
        if "iscrowd" in a and not (type(a["iscrowd"]) in (int, bool) and a["iscrowd"] in (0, 1)):
            return False
    return unique_ids(gt["annotations"])


def valid_detections(dets, gt: dict) -> bool:
    images = {im["id"] for im in gt["images"]}
    return isinstance(dets, list) and all(
        isinstance(d, dict) and is_id(d.get("image_id")) and d["image_id"] in images and is_id(d.get("category_id"))
        and is_box(d.get("bbox"), False) and is_number(d.get("score")) for d in dets)


def pycocotools_stats(gt: dict, dets: list, image_ids=None) -> list[float]:
    gt = copy.deepcopy(gt)
    for a in gt["annotations"]:  # pycocotools needs these two; camloc defaults them
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


# ----------------------------------------------------------------------------------------------
# generators
# ----------------------------------------------------------------------------------------------

coordinate = st.floats(0, 60, allow_nan=False, width=32).map(lambda v: round(v, 2))
box = st.lists(coordinate, min_size=4, max_size=4)


@st.composite
def valid_sets(draw) -> tuple[dict, list]:
    image_ids = draw(st.lists(st.integers(0, 50), min_size=1, max_size=3, unique=True))
    category_ids = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True))
    anns = [{"id": i + 1, "image_id": draw(st.sampled_from(image_ids)), "category_id": draw(st.sampled_from(
        category_ids)), "bbox": draw(box), "iscrowd": draw(st.sampled_from([0, 0, 0, 1]))}
        for i in range(draw(st.integers(0, 4)))]
    for a in anns:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    dets = [{"image_id": draw(st.sampled_from(image_ids)), "category_id": draw(st.sampled_from(category_ids)),
             "bbox": draw(box), "score": draw(st.sampled_from([0.1, 0.5, 0.5, 0.9]))}
            for _ in range(draw(st.integers(1, 6)))]
    gt = {"images": [{"id": i} for i in image_ids], "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in category_ids]}
    return gt, dets


hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**63, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, 1.5, 2.0, float("nan"), float("inf")]),
    st.text(max_size=3), st.sampled_from(["1", "0.5", ""]),
    st.lists(st.one_of(st.integers(-5, 60), st.floats(-5, 60), st.none(), st.text(max_size=1)), max_size=5),
    st.dictionaries(st.sampled_from(["id", "x"]), st.integers(0, 3), max_size=2))

FIELDS = {"images": ["id", "file_name"], "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd"],
          "categories": ["id", "name"], "detections": ["image_id", "category_id", "bbox", "score"]}


@st.composite
def mutated_sets(draw) -> tuple[object, object]:
    """A valid set with one to three hostile edits: a field replaced or removed, an entry replaced,
    a box element replaced, or a whole section replaced."""
    gt, dets = draw(valid_sets())
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(FIELDS)))
        entries = dets if section == "detections" else gt[section]
        kind = draw(st.sampled_from(["field", "field", "field", "delete", "entry", "box", "section"]))
        if kind == "section":
            value = draw(hostile)
            if section == "detections":
                dets = value
            else:
                gt[section] = value
            continue
        if not isinstance(entries, list) or not entries:
            continue
        index = draw(st.integers(0, len(entries) - 1))
        entry = entries[index]
        if kind == "entry":
            entries[index] = draw(hostile)
        elif isinstance(entry, dict):
            key = draw(st.sampled_from(FIELDS[section]))
            if kind == "delete":
                entry.pop(key, None)
            elif kind == "box" and isinstance(entry.get("bbox"), list) and entry["bbox"]:
                entry["bbox"][draw(st.integers(0, len(entry["bbox"]) - 1))] = draw(hostile)
            else:
                entry[key] = draw(hostile)
    return gt, dets


# ----------------------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------------------

def evaluate_or_refuse(gt, dets, expect_valid: bool, image_ids=None) -> dict | None:
    snapshot = repr((gt, dets))
    try:
        metrics = localization_metrics(gt, dets, image_ids)
    except EvaluationError as exc:
        assert_one_line(exc)
        assert not expect_valid, f"a valid input was refused: {exc}"
        return None
    assert expect_valid, "an invalid input was accepted"
    assert repr((gt, dets)) == snapshot, "the input was modified"
    return metrics


@fuzz(60)
@given(valid_sets())
def test_valid_sets_equal_pycocotools(case):
    gt, dets = case
    metrics = evaluate_or_refuse(gt, dets, expect_valid=True)
    assert metrics["coco_stats"] == pycocotools_stats(gt, dets)


@fuzz(250)
@given(mutated_sets())
def test_hostile_sets_are_refused_or_equal_pycocotools(case):
    gt, dets = case
    valid = valid_gt(gt) and valid_detections(dets, gt)
    metrics = evaluate_or_refuse(gt, dets, expect_valid=valid)
    if metrics is not None and dets:
        assert metrics["coco_stats"] == pycocotools_stats(gt, dets)
    if metrics is not None:
        assert metrics["voc_map50"] is None or 0 <= metrics["voc_map50"] <= 1


image_id_lists = st.one_of(st.none(), st.lists(st.one_of(st.integers(-3, 60), hostile), max_size=4),
                           st.text(max_size=3), st.integers(), st.floats())


@fuzz(80)
@given(valid_sets(), image_id_lists, st.one_of(st.floats(-0.5, 1.5), hostile), st.one_of(
    st.sampled_from(["skip", "zero"]), hostile))
def test_hostile_parameters_are_refused_or_sane(case, image_ids, iou, classes_without_gt):
    gt, dets = case
    known = {im["id"] for im in gt["images"]}
    ids_valid = image_ids is None or (isinstance(image_ids, list) and all(is_id(i) and i in known for i in image_ids))
    try:
        coco = coco_evaluate(gt, dets, image_ids)
    except EvaluationError as exc:
        assert_one_line(exc)
        assert not ids_valid, f"valid image_ids {image_ids} were refused: {exc}"
    else:
        assert ids_valid, f"image_ids {image_ids!r} were accepted"
        if image_ids:
            assert coco["stats"] == pycocotools_stats(gt, dets, image_ids)
    valid = ids_valid and is_number(iou) and 0 <= iou < 1 and classes_without_gt in ("skip", "zero")
    try:
        voc = voc_map(gt, dets, iou, image_ids, classes_without_gt)
    except EvaluationError as exc:
        assert_one_line(exc)
        assert not valid, f"valid VOC parameters were refused: {exc}"
        return
    assert valid, f"VOC parameters {iou!r}, {image_ids!r}, {classes_without_gt!r} were accepted"
    assert voc["map"] is None or 0 <= voc["map"] <= 1
    assert all(v is None or 0 <= v <= 1 for v in voc["per_class"].values())


VALID = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                                                 "area": 25, "iscrowd": 0}], "categories": [{"id": 1, "name": "a"}]}
SPECIFIC = {  # the examples, each must be refused
    "image id 1.5 truncated": (VALID, [{"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]),
    "image id 1.0": (VALID, [{"image_id": 1.0, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]),
    "category id '1'": (VALID, [{"image_id": 1, "category_id": "1", "bbox": [0, 0, 5, 5], "score": 1}]),
    "score '0.5'": (VALID, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": "0.5"}]),
    "score True": (VALID, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": True}]),
    "bbox of 3": (VALID, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 1}] * 4),
    "bbox of 8 split in two": (VALID, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5, 0, 0, 5, 5],
                                        "score": 1}]),
    "gt id 2**63": ({**VALID, "images": [{"id": 2**63}]}, []),
    "gt nan bbox": ({**VALID, "annotations": [dict(VALID["annotations"][0], bbox=[0, 0, float("nan"), 5])]}, []),
    "gt inf area": ({**VALID, "annotations": [dict(VALID["annotations"][0], area=float("inf"))]}, []),
    "gt iscrowd '0'": ({**VALID, "annotations": [dict(VALID["annotations"][0], iscrowd="0")]}, []),
    "gt negative width": ({**VALID, "annotations": [dict(VALID["annotations"][0], bbox=[0, 0, -5, 5])]}, []),
    "images not a list": ({**VALID, "images": {"id": 1}}, []),
    "image entry a number": ({**VALID, "images": [1]}, []),
    "category without id": ({**VALID, "categories": [{"name": "a"}]}, []),
    "category name 5": ({**VALID, "categories": [{"id": 1, "name": 5}]}, []),
    "duplicate image ids": ({**VALID, "images": [{"id": 1}, {"id": 1}]}, []),
    "duplicate annotation ids": ({**VALID, "annotations": VALID["annotations"] * 2}, []),
}


@pytest.mark.parametrize("name", sorted(SPECIFIC))
def test_known_bad_inputs_are_refused(name):
    gt, dets = SPECIFIC[name]
    with pytest.raises(EvaluationError) as error:
        localization_metrics(gt, dets)
    assert_one_line(error.value)


NAN_BOX = {**VALID, "annotations": [dict(VALID["annotations"][0], bbox=[0, 0, float("nan"), 1])]}
FILES = {"empty": b"", "not-utf8": b"\xff\xfe{", "deep": b"[" * 100_000, "torn": b'{"images": [',
         "list": b"[]", "nan-bbox": json.dumps(NAN_BOX).encode(),
         "huge-number": b'{"images": [{"id": 1e999}], "annotations": [], "categories": [{"id": 1}]}'}


@pytest.mark.parametrize("name", sorted(FILES))
def test_bad_annotation_and_detection_files_are_refused(tmp_path, name):
    path = tmp_path / "file.json"
    path.write_bytes(FILES[name])
    calls = [lambda: coco_evaluate(path, [])] + ([lambda: coco_evaluate(VALID, path)] if name != "list" else [])
    for call in calls:  # as ground truth, and as detections (where a list is valid)
        with pytest.raises(EvaluationError) as error:
            call()
        assert_one_line(error.value)
    with pytest.raises(EvaluationError):
        coco_evaluate(tmp_path, [])  # a folder


def _array(draw, dtypes: list, shape, finite: bool) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    options = {"allow_nan": False, "allow_infinity": False} if finite and dtype.kind in "fc" else {}
    return draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, **options)))


@st.composite
def scores_and_targets(draw) -> tuple[np.ndarray, np.ndarray]:
    """Scores of any real or complex dtype and shape, finite half the time; targets of the same
    shape half the time."""
    finite = draw(st.booleans())
    shape = draw(st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                           hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))
    scores = _array(draw, [np.float64, np.float32, np.int64, np.bool_, np.complex64], shape, finite)
    target_shape = shape if draw(st.booleans()) else hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)
    return scores, _array(draw, [np.int64, np.bool_, np.float64], target_shape, finite)


@fuzz(100)
@given(scores_and_targets())
def test_classification_ap_refuses_or_gives_probabilities(case):
    scores, targets = case
    valid = (scores.ndim == 2 and scores.shape == targets.shape and scores.dtype.kind in "fi"
             and bool(np.isfinite(scores).all()) and bool(np.isfinite(targets.astype(np.float64)).all()))
    try:
        mean, per_class = classification_ap(scores, targets)
    except EvaluationError as exc:
        assert_one_line(exc)
        assert not valid, f"valid scores/targets were refused: {exc}"
        return
    assert valid, f"{scores.dtype} {scores.shape} scores with {targets.dtype} {targets.shape} targets were accepted"
    assert mean is None or 0 <= mean <= 1
    assert per_class.shape == (scores.shape[1],) and np.all(np.isnan(per_class) | ((per_class >= 0) & (per_class <= 1)))


@pytest.mark.parametrize("scores", [np.array([[0.5, "x"]], dtype=object), [[0.5, None]], "scores", None],
                         ids=["object", "none-inside", "string", "none"])
def test_classification_ap_refuses_non_numbers(scores):
    with pytest.raises(EvaluationError) as error:
        classification_ap(scores, np.ones((1, 2)))
    assert_one_line(error.value)


def test_annotation_id_0_warns_and_keeps_pycocotools_numbers():
    """pycocotools reads a match with annotation id 0 as no match (a perfect detection of that object is a false
    positive): camloc keeps its numbers, and now says so once."""
    from camloc.evaluation.inputs import AnnotationIdWarning

    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [x, 10, 30, 30], "area": 900,
                           "iscrowd": 0} for i, x in ((0, 10), (5, 50))]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [x, 10, 30, 30], "score": s} for x, s in ((10, 0.9), (50, 0.8))]
    with pytest.warns(AnnotationIdWarning, match="annotation #0 has id 0") as caught:
        stats = coco_evaluate(gt, dets)["stats"]
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert stats == pycocotools_stats(gt, dets) and stats[0] < 0.5  # perfect boxes, yet half the AP
