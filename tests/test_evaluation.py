"""Our COCO evaluator must equal pycocotools bit for bit; voc_map must equal the VOC recipe."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from camloc.evaluation import EvaluationError, coco_evaluate, voc_average_precision, voc_map
from camloc.localize import Localizer
from tests.conftest import COCO80, VAL_ANN, VAL_IMAGES


def random_set(seed: int, n_img: int = 25, n_cat: int = 6, max_gt: int = 6, max_det: int = 150):
    """Random GT (crowds, tiny/huge boxes, a category without GT) and detections (ties, jitter, >100/group)."""
    rng = np.random.default_rng(seed)
    images = [{"id": int(i), "width": 640, "height": 480} for i in rng.choice(10000, n_img, replace=False)]
    cats = [{"id": int(c), "name": f"c{c}"} for c in rng.choice(np.arange(1, 91), n_cat, replace=False)]
    anns = []
    for im in images:
        for _ in range(rng.integers(0, max_gt + 1)):
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            w = rng.choice([rng.uniform(1, 20), rng.uniform(20, 120), rng.uniform(100, 400)])
            h = rng.uniform(1, 300)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.choice(cats[:-1])["id"]),
                         "bbox": [x, y, w, h], "area": float(w * h * rng.uniform(0.5, 1.0)),
                         "iscrowd": int(rng.random() < 0.1)})
    dets = []
    for im in images:
        own = [a for a in anns if a["image_id"] == im["id"]]
        for _ in range(rng.integers(0, max_det)):
            category = int(rng.choice(cats)["id"])
            if own and rng.random() < 0.6:
                g = own[rng.integers(len(own))]
                category = g["category_id"] if rng.random() < 0.8 else category
                box = np.array(g["bbox"]) + rng.normal(0, 8, 4)
            else:
                box = np.array([rng.uniform(0, 600), rng.uniform(0, 440), rng.uniform(1, 200), rng.uniform(1, 200)])
            if rng.random() < 0.02:
                box[2] = 0.0
            score = float(np.round(rng.random(), 1)) if rng.random() < 0.5 else float(rng.random())
            dets.append({"image_id": im["id"], "category_id": category, "bbox": box.tolist(), "score": score})
    return {"images": images, "categories": cats, "annotations": anns}, dets


def pycocotools_eval(gt: dict, dets: list) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_identical(ours: dict, theirs: COCOeval) -> None:
    assert ours["stats"] == list(theirs.stats)  # exact, not isclose
    assert np.array_equal(ours["precision"], theirs.eval["precision"])
    assert np.array_equal(ours["recall"], theirs.eval["recall"])
    assert np.array_equal(ours["scores"], theirs.eval["scores"])
    for k, cid in enumerate(theirs.params.catIds):
        p = theirs.eval["precision"][:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if (p > -1).any() else None
        assert ours["per_class"][cid]["AP"] == expected


@pytest.mark.parametrize("seed", range(12))
def test_parity_with_pycocotools_on_random_sets(seed):
    gt, dets = random_set(seed)
    assert_identical(coco_evaluate(gt, dets), pycocotools_eval(gt, dets))


@pytest.mark.parametrize("seed", range(3))
def test_parity_with_more_than_100_detections_per_image_and_category(seed):
    gt, dets = random_set(100 + seed, n_img=10, n_cat=2, max_gt=8, max_det=400)
    assert max(np.unique([(d["image_id"], d["category_id"]) for d in dets], axis=0, return_counts=True)[1]) > 100
    assert_identical(coco_evaluate(gt, dets), pycocotools_eval(gt, dets))


def test_parity_on_a_gt_with_id_zero_and_an_image_subset():
    gt, dets = random_set(7)
    gt["annotations"][0]["id"] = 0  # pycocotools reads a match to id 0 as "unmatched"; so must we
    assert_identical(coco_evaluate(gt, dets), pycocotools_eval(gt, dets))
    subset = [im["id"] for im in gt["images"][:10]]
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = pycocotools_eval(gt, dets)
        theirs.params.imgIds = sorted(subset)
        theirs.evaluate()
        theirs.accumulate()
        theirs.summarize()
    assert coco_evaluate(gt, dets, image_ids=subset)["stats"] == list(theirs.stats)


def test_edge_cases_have_defined_behaviour():
    gt, dets = random_set(3)
    empty = coco_evaluate(gt, [])  # pycocotools crashes on an empty result list
    assert empty["stats"][:6] == [0.0] * 6 and empty["stats"][6:9] == [0.0] * 3
    no_gt = dict(gt, annotations=[])
    assert coco_evaluate(no_gt, dets)["stats"] == [-1.0] * 12
    unknown = [*dets, {"image_id": 123456789, "category_id": dets[0]["category_id"], "bbox": [0, 0, 5, 5],
                       "score": 0.5}]
    with pytest.raises(EvaluationError, match="images not in the annotation file"):
        coco_evaluate(gt, unknown)
    with pytest.raises(EvaluationError, match="score #0 is nan; numbers must be finite"):
        coco_evaluate(gt, [dict(dets[0], score=float("nan"))])
    with pytest.raises(EvaluationError, match="detection #0 has no 'category_id'"):
        coco_evaluate(gt, [{"image_id": dets[0]["image_id"], "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(EvaluationError, match="no categories"):
        coco_evaluate(dict(gt, categories=[]), dets)


@pytest.mark.realdata
@pytest.mark.slow
def test_parity_on_real_coco_mini_val_with_shared_weights(tmp_path):
    gt = json.loads(VAL_ANN.read_text())
    localizer = Localizer.from_checkpoint(COCO80, recipe="seed")  # every class of every image: many detections
    images = gt["images"][:40]
    dets = [d for batch in range(0, len(images), 8)
            for ds in localizer.predict_batch([VAL_IMAGES / im["file_name"] for im in images[batch:batch + 8]],
                                              [im["id"] for im in images[batch:batch + 8]]) for d in ds]
    assert len(dets) >= 80 * len(images)
    ours = coco_evaluate(gt, dets)
    assert_identical(ours, pycocotools_eval(gt, dets))
    assert ours["stats"][1] > 0  # real CAM boxes find real objects


# ------------------------------------------------------------------------------------------------ VOC

def straightforward_voc_map(gt: dict, dets: list, threshold: float = 0.5) -> dict:
    """The VOC recipe written plainly, one detection at a time (the test's independent reference)."""
    aps = {}
    for cat in gt["categories"]:
        cid = cat["id"]
        objects = {}
        for a in gt["annotations"]:
            if a["category_id"] == cid:
                objects.setdefault(a["image_id"], []).append(a)
        npos = sum(1 for objs in objects.values() for a in objs if not a["iscrowd"])
        if npos == 0:
            continue
        used = set()
        mine = sorted([d for d in dets if d["category_id"] == cid], key=lambda d: -d["score"])
        tp, fp = [], []
        for d in mine:
            best, best_ann = -1.0, None
            x, y, w, h = d["bbox"]
            for a in objects.get(d["image_id"], []):
                gx, gy, gw, gh = a["bbox"]
                iw = max(min(x + w - 1, gx + gw - 1) - max(x, gx) + 1, 0)
                ih = max(min(y + h - 1, gy + gh - 1) - max(y, gy) + 1, 0)
                union = w * h + gw * gh - iw * ih
                iou = iw * ih / max(union, np.finfo(float).eps)
                if iou > best:
                    best, best_ann = iou, a
            if best > threshold and best_ann["iscrowd"]:
                continue
            if best > threshold and best_ann["id"] not in used:
                used.add(best_ann["id"])
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        ap = 0.0
        for i in range(len(recall)):  # area under the precision envelope, step by step
            previous = recall[i - 1] if i else 0.0
            ap += (recall[i] - previous) * max(precision[i:])
        aps[cid] = ap
    return {"map": float(np.mean(list(aps.values()))), "per_class": aps}


def test_voc_hand_made_cases():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100}]}
    hit = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}
    miss = {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10]}
    assert voc_map(gt, [dict(hit, score=0.9), dict(miss, score=0.8)])["map"] == 1.0  # TP then FP
    assert voc_map(gt, [dict(hit, score=0.7), dict(miss, score=0.8)])["map"] == 0.5  # FP then TP
    duplicate = voc_map(gt, [dict(hit, score=0.9), dict(hit, score=0.8), dict(miss, score=0.1)])
    assert duplicate["map"] == 1.0 and duplicate["per_class"][2] is None  # class 2 has no GT: skipped
    assert voc_map(gt, [dict(hit, score=0.9)], classes_without_gt="zero")["map"] == 0.5
    # detections of a class without ground truth (found by the fuzz suite: it once raised IndexError)
    no_gt_class = voc_map(gt, [dict(hit, score=0.9), dict(hit, category_id=2, score=0.5)], 0.0,
                          classes_without_gt="zero")
    assert no_gt_class["per_class"] == {1: 1.0, 2: 0.0}
    assert voc_map(gt, [])["map"] == 0.0
    assert voc_average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(
        0.5 * 1.0 + 0.5 * 2 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_voc_equals_straightforward_implementation_on_random_sets(seed):
    gt, dets = random_set(seed, max_det=60)
    for d in dets:  # distinct scores: the plain reference's sort is not the stable one
        d["score"] += 1e-9 * (hash((d["image_id"], *d["bbox"])) % 1000)
    ours, reference = voc_map(gt, dets), straightforward_voc_map(gt, dets)
    assert ours["map"] == pytest.approx(reference["map"], abs=1e-12)
    for cid, ap in reference["per_class"].items():
        assert ours["per_class"][cid] == pytest.approx(ap, abs=1e-12)


@pytest.mark.realdata
def test_voc_on_real_annotations_equals_straightforward_implementation():
    gt = json.loads(VAL_ANN.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        for _ in range(2):  # jittered copies of real boxes, plus false positives on other classes
            box = (np.array(a["bbox"]) + rng.normal(0, 0.15 * max(a["bbox"][2:]), 4)).tolist()
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                         "score": float(rng.random())})
        dets.append({"image_id": a["image_id"], "category_id": int(rng.choice([c["id"] for c in gt["categories"]])),
                     "bbox": a["bbox"], "score": float(rng.random())})
    ours, reference = voc_map(gt, dets), straightforward_voc_map(gt, dets)
    assert 0.05 < ours["map"] < 0.95
    assert ours["map"] == pytest.approx(reference["map"], abs=1e-12)
