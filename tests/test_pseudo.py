"""Pseudo-labels (`python -m camloc.pseudo`): never a ground-truth box read, the filter against a plain
reference, the file's contents, and bad input in one line."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camloc.boxes import DEFAULT_RECIPE
from camloc.demo import DEMO_CHECKPOINT
from camloc.evaluation import Detections, GroundTruth, ImageLabels
from camloc.io.digest import file_digest
from camloc.pseudo import DEFAULT_RULES, PseudoRule, default_rule
from camloc.pseudo.cli import main as pseudo_main
from camloc.synthetic import generate


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Eight 64-px scenes of several instances per class (the demo model's six classes)."""
    return generate(tmp_path_factory.mktemp("scenes"), 8, 0, num_classes=6, size=64, seed=3, max_objects=8)


def run_pseudo(scenes, ann, out, *extra) -> int:
    return pseudo_main(["--images", str(scenes / "train"), "--ann", str(ann), "--checkpoint", str(DEMO_CHECKPOINT),
                        "--img-size", "64", "--out", str(out), "--workers", "0", "--device", "cpu", *extra])


def garbage_boxes(data: dict) -> dict:
    """The same labels with every box, area and segmentation replaced by garbage a box reader would refuse."""
    junk = [["x", None, -1, float("nan")], "not a box", {"bbox": 1}, [], [1e308, -1e308, -5, -5]]
    anns = []
    for i, a in enumerate(data["annotations"]):
        a = {k: v for k, v in a.items() if k not in ("bbox", "area")}
        if i % 3:
            a["bbox"] = junk[i % len(junk)]
            a["area"] = "garbage"
            a["segmentation"] = {"counts": None}
        anns.append(a)
    return {**data, "annotations": anns}


def test_no_ground_truth_box_is_read(scenes, tmp_path):
    ann = scenes / "annotations" / "instances_train.json"
    assert run_pseudo(scenes, ann, tmp_path / "a.json") == 0
    (tmp_path / "garbage").mkdir()
    spoiled = tmp_path / "garbage" / ann.name  # the same name: info records it
    text = json.dumps(garbage_boxes(json.loads(ann.read_text())), allow_nan=True)
    spoiled.write_text(text)
    with pytest.raises(ValueError):
        GroundTruth(spoiled)  # the boxes really are unreadable …
    ImageLabels(spoiled)  # … and the labels are not
    assert run_pseudo(scenes, spoiled, tmp_path / "b.json") == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_the_file_is_coco_with_the_labels_and_its_provenance(scenes, tmp_path):
    ann = scenes / "annotations" / "instances_train.json"
    assert run_pseudo(scenes, ann, tmp_path / "p.json", "--top-k", "2") == 0
    document = json.loads((tmp_path / "p.json").read_text())
    truth = GroundTruth(tmp_path / "p.json")  # loads as COCO ground truth (what train --detector reads)
    labels = ImageLabels(ann).labels()
    assert [im["image_labels"] for im in document["images"]] == [labels[im["id"]] for im in document["images"]]
    pairs = {(a["image_id"], a["category_id"]) for a in document["annotations"]}
    assert pairs == {(im["id"], c) for im in document["images"] for c in im["image_labels"]}  # every label boxed
    per_class = np.unique(truth.ann_image * 100 + truth.ann_category, return_counts=True)[1]
    assert per_class.max() <= 2
    assert all(a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
               for a in document["annotations"])
    info = document["info"]
    assert info["source"]["checkpoint_sha256"] == file_digest(DEMO_CHECKPOINT)
    assert info["source"]["recipe"] == DEFAULT_RECIPE and info["source"]["kind"] == "classifier"
    assert info["source"]["align"] == "measured"  # the default recipe's maps, laid where the model looks
    assert info["filter"] == {**DEFAULT_RULES["classifier"].as_dict(), "top_k": 2}  # the option over the default
    assert info["images"] == len(document["images"]) == 8 and info["boxes"] == len(document["annotations"])


def test_images_without_labels_stay_as_negatives_and_unreadable_ones_are_left_out(scenes, tmp_path):
    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    folder = tmp_path / "train"
    shutil.copytree(scenes / "train", folder)
    (folder / data["images"][1]["file_name"]).write_bytes(b"not a jpeg")
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != data["images"][0]["id"]]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    assert pseudo_main(["--images", str(folder), "--ann", str(ann), "--checkpoint", str(DEMO_CHECKPOINT),
                        "--img-size", "64", "--out", str(tmp_path / "p.json"), "--workers", "0"]) == 0
    document = json.loads((tmp_path / "p.json").read_text())
    ids = [im["id"] for im in document["images"]]
    first, second = data["images"][0]["id"], data["images"][1]["id"]
    assert first in ids and not any(a["image_id"] == first for a in document["annotations"])
    assert second not in ids and document["info"]["images_unreadable"][0]["image_id"] == second
    assert document["info"]["images_without_labels"] == 1


@pytest.mark.parametrize("case, expected", [
    ("other classes", "not COCO's or"),
    ("no images", "lists no images"),
    ("bad rule", "top_k must be"),
    ("bad align", "argument --align: invalid choice: 'centred'"),
])
def test_bad_input_is_one_line(scenes, tmp_path, capsys, case, expected):
    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    if case == "other classes":
        data["categories"] = [{**c, "id": c["id"] + 100} for c in data["categories"]]
        data["annotations"] = [{**a, "category_id": a["category_id"] + 100} for a in data["annotations"]]
    if case == "no images":
        data["images"], data["annotations"] = [], []
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    try:
        extra = {"bad rule": ["--top-k", "0"], "bad align": ["--align", "centred"]}.get(case, [])
        code = run_pseudo(scenes, ann, tmp_path / "p.json", *extra)
    except SystemExit as exc:  # argparse's own exit for a bad option
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "p.json").exists()


def reference_keep(rule: PseudoRule, rows: list[tuple], labels: dict, sizes: dict) -> list[int]:
    """The rule of :class:`PseudoRule`, one (image, class) at a time in plain Python (greedy NMS by hand)."""
    def iou(a, b):
        x0, y0 = max(a[0], b[0]), max(a[1], b[1])
        x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
        inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    kept = []
    for image_id, cats in labels.items():
        side = min(sizes[image_id])
        for c in cats:
            group = [i for i, r in enumerate(rows) if r[0] == image_id and r[1] == c
                     and min(r[2][2:]) >= rule.min_side * side and min(r[2][2:]) > 0]
            group.sort(key=lambda i: -rows[i][3])
            survivors = []
            for i in group:
                if all(iou(rows[i][2], rows[j][2]) <= rule.nms_iou for j in survivors):
                    survivors.append(i)
            if survivors:
                best = rows[survivors[0]][3]
                kept += [i for i in survivors[:rule.top_k] if rows[i][3] >= rule.min_relative * best]
    return kept


box = st.tuples(*(st.integers(0, 60),) * 2, *(st.integers(0, 40),) * 2).map(lambda b: [float(v) for v in b])


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 4), box, st.integers(1, 1000).map(lambda s: s / 7)),
                     max_size=30, unique_by=lambda r: r[3]),
       top_k=st.integers(1, 4), min_relative=st.sampled_from([0.0, 0.3, 0.8]),
       nms_iou=st.sampled_from([0.3, 0.7]))
def test_the_filter_equals_a_plain_reference(rows, top_k, min_relative, nms_iou):
    rule = PseudoRule(min_relative=min_relative, top_k=top_k, nms_iou=nms_iou, min_side=0.05)
    labels = {1: [1, 2], 2: [4], 3: []}
    sizes = {1: (100, 80), 2: (60, 120), 3: (50, 50)}
    found = Detections.from_arrays(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                                   np.array([r[2] for r in rows], np.float64).reshape(-1, 4),
                                   np.array([r[3] for r in rows], np.float64))
    kept = rule.keep(found, labels, sizes)
    expected = reference_keep(rule, rows, labels, sizes)
    assert sorted(kept.score.tolist()) == sorted(rows[i][3] for i in expected)
    order = [(i, c) for i, c in zip(kept.image.tolist(), kept.category.tolist())]
    assert order == sorted(order, key=lambda p: (list(labels).index(p[0]), p[1]))


def test_each_kind_of_source_has_its_default_filter_and_options_change_only_what_they_name():
    assert default_rule("classifier") == DEFAULT_RULES["classifier"] != DEFAULT_RULES["detector"] == PseudoRule()
    assert default_rule("detector", top_k=5, nms_iou=None) == PseudoRule(top_k=5)
    with pytest.raises(ValueError, match="nms_iou must be in"):
        default_rule("classifier", nms_iou=0.0)
