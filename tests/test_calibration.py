"""Per-class gating thresholds: the quantile rule, the ``calibrated`` gate, where the thresholds live
(the checkpoint's meta) and ``python -m camloc.calibration`` end to end on generated scenes."""

import numpy as np
import pytest
import torch

from camloc.boxes import make_recipe, select_classes
from camloc.calibration import FLOOR, class_thresholds, main
from camloc.demo import DEMO_CHECKPOINT
from camloc.localize import Localizer
from camloc.models import ModelError, complete_meta, load_model
from camloc.synthetic import generate
from tests.helpers import gradient_image, random_head_model


def test_thresholds_are_a_low_quantile_of_each_class_when_present():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((200, 4)))
    present = torch.zeros(200, 4, dtype=torch.bool)
    present[:100, 0] = True  # well-known class
    present[:3, 1] = True  # too rare: keeps the floor
    present[:, 3] = True
    probs[:, 3] = 1e-5  # present but never probable: the floor, not below it
    thresholds = class_thresholds(probs, present, quantile=0.1, min_positives=5)
    assert thresholds[0] == pytest.approx(float(np.quantile(probs[:100, 0].numpy(), 0.1)))
    assert thresholds[1:] == [FLOOR, FLOOR, FLOOR]
    kept = (probs[:100, 0] >= thresholds[0]).double().mean()
    assert 0.89 <= kept <= 0.91  # 90 % of the images where class 0 is present keep it
    with pytest.raises(ValueError, match="must both be"):
        class_thresholds(probs, present[:, :3])


def test_the_calibrated_gate_uses_each_class_threshold_or_the_floor():
    probs = torch.tensor([[0.5, 0.002, 0.0005, 0.3], [0.1, 0.2, 0.3, 0.4]])
    assert select_classes(probs, "calibrated").tolist() == [[True, True, False, True], [True] * 4]
    thresholds = [0.4, 0.001, 0.0001, 0.35]
    assert select_classes(probs, "calibrated", thresholds=thresholds).tolist() == [
        [True, True, True, False], [False, True, True, True]]
    both = select_classes(probs, "calibrated,topk:1", thresholds=thresholds)
    assert both.tolist() == [[True, False, False, False], [False, False, False, True]]
    with pytest.raises(ValueError, match="one threshold per class"):
        select_classes(probs, "calibrated", thresholds=[0.1, 0.2])
    assert make_recipe("multilevel", classes="calibrated", thresholds=thresholds).select(probs).tolist() == [
        [True, True, True, False], [False, True, True, True]]


def test_thresholds_live_in_the_model_meta_and_reach_every_recipe():
    model, meta = random_head_model("resnet18")
    with pytest.raises(ModelError, match="class_thresholds"):
        complete_meta({**meta, "class_thresholds": [0.5] * 79})
    with pytest.raises(ModelError, match="class_thresholds"):
        complete_meta({**meta, "class_thresholds": [float("nan")] * 80})
    thresholds = [0.9] * 80
    thresholds[7] = 0.0  # class 7 always passes, the others only when p ≥ 0.9
    calibrated = Localizer(model, {**meta, "class_thresholds": thresholds}, img_size=64, classes="calibrated")
    assert calibrated.recipe.thresholds == tuple(thresholds)
    assert calibrated.recipe_for("evidence", classes="calibrated").thresholds == tuple(thresholds)
    image = gradient_image(40, 50)
    probs = calibrated.analyze(image)[0].probs
    dets = calibrated.predict(image)
    expected = {calibrated.category_ids[k] for k in range(80) if k == 7 or probs[k] >= 0.9}
    assert {d["category_id"] for d in dets} == expected
    assert 1 < len(expected) < int((probs >= FLOOR).sum())  # stricter than the global floor, not empty


def test_calibration_cli_writes_a_checkpoint_with_thresholds(tmp_path, capsys):
    data = generate(tmp_path / "shapes", 24, 0, num_classes=6, size=96, seed=5)
    out = tmp_path / "calibrated.pt"
    code = main(["--checkpoint", str(DEMO_CHECKPOINT), "--images", str(data / "train"), "--ann",
                 str(data / "annotations" / "instances_train.json"), "--out", str(out), "--min-positives", "2"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    _, meta = load_model(out)
    assert len(meta["class_thresholds"]) == 6 and meta["calibration"]["images"] == 24
    assert all(FLOOR <= t <= 1 for t in meta["class_thresholds"]) and max(meta["class_thresholds"]) > FLOOR
    _, original = load_model(DEMO_CHECKPOINT)
    assert "class_thresholds" not in original  # the input checkpoint is untouched
    coco = main(["--checkpoint", str(DEMO_CHECKPOINT), "--images", str(data / "train"), "--ann",
                 str(tmp_path / "missing.json"), "--out", str(out)])
    assert coco == 2 and capsys.readouterr().err.startswith("error: ")
