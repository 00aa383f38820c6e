"""`python -m eval` end to end on real COCO images with the shared COCO-80 weights."""

import contextlib
import io
import json
import shutil
import subprocess
import sys

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from camloc.demo import DEMO_CHECKPOINT
from camloc.localize import Localizer
from eval.cli import main
from tests.conftest import COCO80, IMAGENET1001, ROOT, VAL_ANN, VAL_IMAGES

pytestmark = pytest.mark.realdata


def eval_args(out, *extra):
    """The CLI on the real val images; the two-view recipe (the default's six views would triple these tests'
    time; the default's quality is bench/recipes.py's), which ``extra`` may override."""
    return ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(COCO80), "--out", str(out),
            "--workers", "1", "--recipe", "multilevel-flip", *extra]


@pytest.mark.slow
def test_end_to_end_metrics_equal_pycocotools_and_beat_the_full_image_baseline(tmp_path):
    assert main(eval_args(tmp_path / "cam", "--limit", "64")) == 0
    dets = json.loads((tmp_path / "cam" / "detections.json").read_text())
    metrics = json.loads((tmp_path / "cam" / "metrics.json").read_text())
    per_image = {}
    for d in dets:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert len(per_image) == 64 and min(per_image.values()) >= 1
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(VAL_ANN))
        evaluator = COCOeval(coco, coco.loadRes(str(tmp_path / "cam" / "detections.json")), "bbox")
        evaluator.params.imgIds = sorted(per_image)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert metrics["coco_stats"] == list(evaluator.stats)
    assert set(metrics["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                    "ARm", "ARl"}
    assert 0 <= metrics["voc_map50"] <= 1 and len(metrics["per_class"]) == 80
    curves = metrics["pr_curves"]
    assert len(curves["recall"]) == 101 and all(len(c["iou50"]) == 101 for c in curves["classes"].values())
    assert main(eval_args(tmp_path / "full", "--limit", "64", "--baseline", "full")) == 0
    baseline = json.loads((tmp_path / "full" / "metrics.json").read_text())
    print(f"\nAP50 on 64 coco-mini val images: CAM {metrics['coco']['AP50']:.4f}, "
          f"full-image baseline {baseline['coco']['AP50']:.4f}")
    assert metrics["coco"]["AP50"] > baseline["coco"]["AP50"]
    assert not (tmp_path / "cam" / ".progress.jsonl").exists()


def test_interrupted_run_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    """(Box stage inline here; resuming with box workers and torchrun ranks: tests/test_eval_pipeline.py.)"""
    assert main(eval_args(tmp_path / "whole", "--limit", "12", "--batch-size", "4", "--box-workers", "0")) == 0
    expected = json.loads((tmp_path / "whole" / "detections.json").read_text())

    original = Localizer.analyze_batch
    calls = []

    def interrupt_after_two_batches(self, pixels, classes=None, views=None):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, pixels, classes, views)

    monkeypatch.setattr(Localizer, "analyze_batch", interrupt_after_two_batches)
    out = tmp_path / "cut"
    assert main(eval_args(out, "--limit", "12", "--batch-size", "4", "--box-workers", "0")) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "detections.json").exists() and not (out / "metrics.json").exists()
    calls.clear()
    assert main(eval_args(out, "--limit", "12", "--batch-size", "4", "--box-workers", "0", "--resume")) == 0
    assert calls == [4]  # only the last batch was computed
    assert json.loads((out / "detections.json").read_text()) == expected
    with pytest.raises(SystemExit):  # an invalid option is argparse's one-line error
        main(eval_args(out, "--threshold", "median"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "eval", *args], cwd=ROOT, capture_output=True, text=True)


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ann = json.loads(VAL_ANN.read_text())
    for im in ann["images"][:3]:
        shutil.copy(VAL_IMAGES / im["file_name"], images / im["file_name"])
    cases = {
        "images listed in": ["--images", str(images), "--ann", str(VAL_ANN), "--checkpoint", str(COCO80)],
        "not valid JSON": ["--images", str(VAL_IMAGES), "--ann", str(COCO80.with_suffix(".pth")),
                           "--checkpoint", str(COCO80)],
        "are not COCO's": ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(IMAGENET1001)],
        "no such checkpoint": ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(tmp_path)],
        "differ by name": ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(DEMO_CHECKPOINT)],
    }
    for message, args in cases.items():
        out = tmp_path / "out"
        result = run_cli(*args, "--out", str(out))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
        assert not (out / "detections.json").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_unreadable_images_are_skipped_listed_and_the_rest_equals_pycocotools(tmp_path, capsys, decode):
    """A folder where 4 of 16 real images are damaged: the run finishes, lists them, warns once, and
    its metrics are pycocotools' on the 12 readable images — with JPEGs decoded in the loader workers or
    handed over as bytes and decoded on the device (here the CPU: the same code as nvJPEG's path)."""
    ann = json.loads(VAL_ANN.read_text())
    chosen = sorted(ann["images"], key=lambda im: im["id"])[:16]
    folder = tmp_path / "images"
    folder.mkdir()
    for im in chosen:
        shutil.copy(VAL_IMAGES / im["file_name"], folder / im["file_name"])
    jpeg = (folder / chosen[1]["file_name"]).read_bytes()
    damage = {chosen[1]["file_name"]: jpeg[: len(jpeg) // 2], chosen[5]["file_name"]: b"not a jpeg",
              chosen[9]["file_name"]: jpeg[:2] + bytes(40) + jpeg[42:], chosen[12]["file_name"]: b""}
    for name, content in damage.items():
        (folder / name).write_bytes(content)
    ids = {im["id"] for im in chosen}
    subset = tmp_path / "ann.json"
    subset.write_text(json.dumps(dict(ann, images=chosen, annotations=[a for a in ann["annotations"]
                                                                         if a["image_id"] in ids])))
    out = tmp_path / "out"
    assert main(["--images", str(folder), "--ann", str(subset), "--checkpoint", str(COCO80), "--out", str(out),
                 "--workers", "1", "--batch-size", "4", "--decode", decode]) == 0
    err = capsys.readouterr().err
    assert sum("warning:" in line for line in err.splitlines()) == 1 and "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(u["file_name"] for u in metrics["unreadable_images"]) == sorted(damage)
    assert all(str(folder) in u["reason"] for u in metrics["unreadable_images"])
    readable = sorted(ids - {u["image_id"] for u in metrics["unreadable_images"]})
    assert metrics["num_images"] == len(readable) == 12
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(subset))
        evaluator = COCOeval(coco, coco.loadRes(str(out / "detections.json")), "bbox")
        evaluator.params.imgIds = readable
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert metrics["coco_stats"] == list(evaluator.stats)
    assert metrics["coco"]["AP50"] > 0


def test_map_method_and_faithfulness_in_metrics_and_report(tmp_path, capsys):
    """``--method`` picks any registered method; ``--faithfulness`` adds the four measures of every (image,
    present class) map to metrics.json and the report; it refuses ``--resume`` (one line, exit 2)."""
    assert main(eval_args(tmp_path / "cam", "--limit", "3", "--img-size", "96", "--box-workers", "0",
                          "--faithfulness")) == 0
    metrics = json.loads((tmp_path / "cam" / "metrics.json").read_text())
    faith = metrics["faithfulness"]
    ann = json.loads(VAL_ANN.read_text())
    first = sorted(im["id"] for im in ann["images"])[:3]
    pairs = {(a["image_id"], a["category_id"]) for a in ann["annotations"]
             if a["image_id"] in first and not a["iscrowd"]}
    assert faith["num_maps"] == len(pairs) and 0 <= faith["average_drop"] <= 100
    assert 0 <= faith["deletion_auc"] <= 1 and 0 <= faith["insertion_auc"] <= 1
    assert "Average Drop" in capsys.readouterr().out
    assert main(eval_args(tmp_path / "fused", "--limit", "3", "--img-size", "96", "--box-workers", "0",
                          "--method", "layercam-fused")) == 0
    fused = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    assert fused["settings"]["method"] == "layercam-fused" and "faithfulness" not in fused
    assert fused["coco"]["AR100"] > 0
    result = run_cli(*eval_args(tmp_path / "again", "--faithfulness", "--resume"))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("python -m eval: error:")
