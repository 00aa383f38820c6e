"""The synthetic benchmark: determinism, honest ground truth, and train → eval end to end."""

import hashlib
import json

import numpy as np
import pytest

from camloc.synthetic import MIN_VISIBLE, generate, main, render_scene
from eval.cli import main as eval_main
from train.cli import main as train_main


def digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", 6, 3, seed=5)
    generate(tmp_path / "b", 6, 3, seed=5)
    generate(tmp_path / "c", 6, 3, seed=6)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    data = json.loads((tmp_path / "a" / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 6 and [c["id"] for c in data["categories"]] == list(range(1, 7))


def test_boxes_are_the_visible_pixels_and_scenes_are_not_trivial():
    centres, per_image, classes_per_image = [], [], []
    for i in range(200):
        image, objects = render_scene(np.random.default_rng([0, 0, i]), 160, 6)
        assert image.shape == (160, 160, 3) and image.dtype == np.uint8
        per_image.append(len(objects))
        classes_per_image.append(len({o["category_index"] for o in objects}))
        for obj in objects:
            x, y, w, h = obj["bbox"]
            assert obj["area"] >= MIN_VISIBLE and obj["area"] <= w * h and x >= 0 and x + w <= 160 and y + h <= 160
            centres.append((x + w / 2, y + h / 2, w * h))
    centres = np.array(centres)
    off_centre = np.hypot(centres[:, 0] - 80, centres[:, 1] - 80) > 40
    assert off_centre.mean() > 0.3  # objects are often far from the centre
    assert (centres[:, 2] < 0.1 * 160 * 160).mean() > 0.3  # and often small
    assert max(per_image) >= 4 and np.mean(classes_per_image) > 1.3  # several instances and classes


def test_cli_arguments_are_checked(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--classes", "11"]) == 2
    assert "between 1 and 10" in capsys.readouterr().err


@pytest.mark.slow
def test_train_from_scratch_then_cam_boxes_beat_baselines(tmp_path):
    data = generate(tmp_path / "data", 600, 100, num_classes=6, size=160, seed=0)
    ann = lambda split: str(data / "annotations" / f"instances_{split}.json")  # noqa: E731
    assert train_main(["--images", str(data / "train"), "--ann", ann("train"), "--val-images", str(data / "val"),
                       "--val-ann", ann("val"), "--arch", "mobilenet_v2", "--weights", "none", "--epochs", "5",
                       "--img-size", "160", "--batch-size", "16", "--lr", "1e-2", "--workers", "2",
                       "--out", str(tmp_path / "run")]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    results = {}
    for name, extra in {"cam": [], "full": ["--baseline", "full"], "center": ["--baseline", "center"]}.items():
        assert eval_main(["--images", str(data / "val"), "--ann", ann("val"), "--checkpoint",
                          str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / name), "--workers", "0",
                          *extra]) == 0
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())["coco"]["AP50"]
    best_map = max(r["val_map"] for r in log)
    print(f"\nsynthetic: classification mAP {best_map:.3f}; AP50 CAM {results['cam']:.4f}, "
          f"full-image {results['full']:.4f}, centre {results['center']:.4f}")
    assert best_map > 0.7
    assert results["cam"] > 0.05 and results["cam"] > 5 * max(results["full"], results["center"])
