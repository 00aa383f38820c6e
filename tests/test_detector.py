"""Detectors (`camloc.detector`, `python -m train --detector`, `python -m eval` with a detector checkpoint): build
from a classifier's backbone, checkpoints that round-trip, a tiny training run with resume, a second round,
eval's metrics equal to the evaluator's on Detector.detect, and bad input in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from camloc.demo import DEMO_CHECKPOINT, example_images
from camloc.detector import Detector, build_detector, checkpoint_kind, detector_payload, load_any, load_detector
from camloc.detector.data import DetectionSamples, collate_detection
from camloc.evaluation import GroundTruth, coco_evaluate
from camloc.io.data import CocoIndex
from camloc.localize import Localizer
from camloc.models import ModelError, atomic_torch_save, load_model
from camloc.pseudo import DEFAULT_RULES
from camloc.synthetic import generate
from eval.cli import main as eval_main
from tests.conftest import ROOT
from tests.test_train_cli import free_port
from train import detector as loop
from train.cli import main as train_main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Eight training and four validation scenes of 64 px (the demo model's six classes)."""
    return generate(tmp_path_factory.mktemp("scenes"), 8, 4, num_classes=6, size=64, seed=5, max_objects=6)


def tiny(scenes, out, *extra):
    """A detector on the demo classifier's backbone, 64 px, two epochs of two steps: seconds."""
    return ["--detector", "fasterrcnn_mobilenet_v2_fpn", "--images", str(scenes / "train"),
            "--ann", str(scenes / "annotations" / "instances_train.json"), "--val-images", str(scenes / "val"),
            "--val-ann", str(scenes / "annotations" / "instances_val.json"), "--out", str(out),
            "--weights", str(DEMO_CHECKPOINT), "--img-size", "64", "--epochs", "2", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--lr", "1e-3", *extra]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("name, expected", [
    ("yolo_resnet50_fpn", "HEAD_BACKBONE_fpn"),
    ("fasterrcnn_mobilenet_v2", "HEAD_BACKBONE_fpn"),
    ("fcos_densenet121_fpn", "not a MobileNetV2/V3, ResNet"),
    ("retinanet_resnet51_fpn", "not a MobileNetV2/V3, ResNet"),
])
def test_detector_names_are_checked(name, expected):
    with pytest.raises(ModelError, match=expected):
        build_detector(name, ["a"], [1])


def test_backbone_starts_from_the_classifier_and_other_archs_are_refused():
    model, meta = build_detector("fasterrcnn_mobilenet_v2_fpn", ["a", "b"], [3, 7], DEMO_CHECKPOINT, 64)
    classifier, _ = load_model(DEMO_CHECKPOINT)
    body = model.backbone.body.state_dict()
    source = classifier.net.state_dict()
    assert body and all(torch.equal(tensor, source[f"features.{key}"]) for key, tensor in body.items())
    assert meta["norm"] == "frozen" and meta["kind"] == "detector" and meta["category_ids"] == [3, 7]
    assert not any(p.requires_grad for p in model.backbone.body["0"].parameters())  # the stem stays fixed
    assert all(p.requires_grad for p in model.backbone.body["18"].parameters())
    with pytest.raises(ModelError, match="mobilenet_v2 classifier; this detector's backbone is a resnet18"):
        build_detector("fcos_resnet18_fpn", ["a"], [1], DEMO_CHECKPOINT, 64)
    for head in ("retinanet", "fcos"):  # the other heads build and run from the same backbone
        other, _ = build_detector(f"{head}_mobilenet_v2_fpn", ["a"], [1], DEMO_CHECKPOINT, 64)
        other.eval()
        with torch.no_grad():
            assert len(other([torch.rand(3, 64, 80)])) == 1


def test_checkpoints_round_trip_and_each_kind_goes_to_its_own_loader(tmp_path):
    model, meta = build_detector("fasterrcnn_mobilenet_v2_fpn", ["a", "b"], [3, 7], None, 64)
    path = tmp_path / "det.pt"
    atomic_torch_save(detector_payload(model, meta, epoch=1), path)
    torch.load(path, weights_only=True)  # plain data: loads with weights_only
    assert checkpoint_kind(path) == "detector" and checkpoint_kind(DEMO_CHECKPOINT) == "classifier"
    loaded, loaded_meta, extras = load_detector(path)
    assert extras == {"epoch": 1} and loaded_meta["norm"] == "batch"
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    first = Detector(model, meta, device="cpu", score_threshold=0.0).detect([image])
    again = Detector(loaded, loaded_meta, device="cpu", score_threshold=0.0).detect([image])
    assert len(first) > 0 and np.array_equal(first.bbox, again.bbox) and np.array_equal(first.score, again.score)
    assert isinstance(load_any(path)[0], torch.nn.Module) and load_any(DEMO_CHECKPOINT)[1]["arch"] == "mobilenet_v2"
    with pytest.raises(ModelError, match=r"a detector checkpoint \(.*\), which has no class maps"):
        Localizer.from_checkpoint(path)
    with pytest.raises(ModelError, match="a classifier checkpoint, not a detector"):
        Detector.from_checkpoint(DEMO_CHECKPOINT)
    state = dict(weights(path))
    state.pop(next(iter(state)))
    atomic_torch_save({**torch.load(path, weights_only=True), "state_dict": state}, tmp_path / "cut.pt")
    with pytest.raises(ModelError, match="weights do not fit a fasterrcnn_mobilenet_v2_fpn"):
        load_detector(tmp_path / "cut.pt")


def test_detect_gives_each_images_boxes_in_its_own_pixels(tmp_path):
    model, meta = build_detector("fasterrcnn_mobilenet_v2_fpn", list("abcdef"), [11, 12, 13, 14, 15, 16],
                                 DEMO_CHECKPOINT, 96)
    detector = Detector(model, meta, device="cpu", score_threshold=0.0, max_dets=7)
    files = example_images()[:2]
    found = detector.detect(files, image_ids=[40, 41])
    assert set(found.image.tolist()) <= {40, 41} and set(found.category.tolist()) <= set(meta["category_ids"])
    assert np.bincount(found.image - 40).max() <= 7
    assert (found.bbox[:, :2] >= 0).all() and (found.bbox[:, 0] + found.bbox[:, 2] <= 320 + 1e-3).all()
    per_image = detector.predict_batch(files, [40, 41])
    assert sum(map(len, per_image)) == len(found) and all(d["image_id"] == 41 for d in per_image[1])
    alone = detector.predict(files[1])  # a batch of one: the same boxes up to float rounding
    assert [d["category_id"] for d in alone] == [d["category_id"] for d in per_image[1]] and "image_id" not in alone[0]
    assert np.allclose([d["bbox"] for d in alone], [d["bbox"] for d in per_image[1]], atol=1e-3)
    assert len(detector.detect([])) == 0
    with pytest.raises(ValueError, match="2 images but 1 image ids"):
        detector.detect(files, image_ids=[1])


@pytest.mark.slow
def test_a_tiny_detector_trains_resumes_and_evaluates(scenes, tmp_path, monkeypatch):
    assert train_main(tiny(scenes, tmp_path / "whole", "--profile")) == 0  # profiled: the same numbers
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and r["val_ap"] is not None and "loss_objectness" in r for r in log)
    assert {"forward", "backward", "validation"} <= {row["stage"] for row in log[0]["profile"]["stages"]}

    original = loop.train_epoch

    def killed_in_epoch_two(net, model, loader, *args):
        if args[-1] == 1:  # epoch index 1: die after its first step
            batches = iter(loader)
            loader_one = [next(batches)]
            original(net, model, _Sized(loader_one, loader.dataset), *args)
            raise KeyboardInterrupt
        return original(net, model, loader, *args)

    monkeypatch.setattr(loop, "train_epoch", killed_in_epoch_two)
    assert train_main(tiny(scenes, tmp_path / "cut")) == 130
    monkeypatch.setattr(loop, "train_epoch", original)
    assert train_main(tiny(scenes, tmp_path / "cut", "--resume")) == 0
    whole, resumed = weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    # python -m eval recognises the detector and its metrics are the evaluator's on Detector.detect
    out = tmp_path / "eval"
    assert eval_main(["--images", str(scenes / "val"), "--ann", str(scenes / "annotations" / "instances_val.json"),
                      "--checkpoint", str(tmp_path / "whole" / "best.pt"), "--out", str(out), "--workers", "0",
                      "--box-workers", "0", "--batch-size", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    truth = GroundTruth(scenes / "annotations" / "instances_val.json")
    detector = Detector.from_checkpoint(tmp_path / "whole" / "best.pt", device="cpu")
    found = detector.detect([scenes / "val" / im["file_name"] for im in truth.images], truth.image_ids.tolist())
    assert metrics["coco_stats"] == pytest.approx(coco_evaluate(truth, found)["stats"], abs=1e-12)
    assert len(json.loads((out / "detections.json").read_text())) == len(found)
    assert metrics["coco"]["AP"] == pytest.approx(log[-1]["val_ap"], abs=1e-12)


class _Sized(list):
    """A list of batches that also has the loader's dataset (for the epoch's messages)."""

    def __init__(self, batches, dataset):
        super().__init__(batches)
        self.dataset = dataset


@pytest.mark.slow
def test_each_round_relabels_with_the_previous_rounds_detector(scenes, tmp_path):
    out = tmp_path / "run"
    assert train_main(tiny(scenes, out, "--epochs", "1", "--rounds", "3")) == 0
    labels = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    present = {(a["image_id"], a["category_id"]) for a in labels["annotations"]}
    for number, previous in ((2, out), (3, out / "round2")):
        pseudo = json.loads((out / f"round{number}" / "pseudo.json").read_text())
        assert pseudo["info"]["source"] == {"kind": "detector", "checkpoint": str(previous / "best.pt")}
        assert f"round {number}:" in pseudo["info"]["description"]
        assert pseudo["info"]["filter"] == DEFAULT_RULES["detector"].as_dict()
        assert {(a["image_id"], a["category_id"]) for a in pseudo["annotations"]} <= present  # labelled classes only
        assert load_detector(out / f"round{number}" / "best.pt")[1]["kind"] == "detector"
    assert not (out / "round4").exists()


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes(scenes, tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "train",
                             *tiny(scenes, out, "--epochs", "1")],
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".camloc.lock", "best.pt", "last.pt", "log.jsonl"]  # one set
    assert result.stdout.count("epoch=1") == 1  # only rank 0 reports
    load_detector(out / "last.pt")


@pytest.mark.parametrize("case, expected", [
    ("empty file", "lists no images: nothing to train a detector on"),
    ("no boxes", "has no boxes at all"),
    ("classifier option", "--dilate is a classifier option"),
    ("unknown detector", "--detector: detector 'ssd_vgg16_fpn' is not HEAD_BACKBONE_fpn"),
    ("rounds without detector", "--rounds goes with --detector"),
    ("no rounds", "--rounds must be at least 1 (got 0)"),
])
def test_bad_training_input_is_one_line(scenes, tmp_path, capsys, case, expected):
    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    args = tiny(scenes, tmp_path / "out")
    if case in ("empty file", "no boxes"):
        data = {**data, "images": [] if case == "empty file" else data["images"], "annotations": []}
        ann = tmp_path / "pseudo.json"
        ann.write_text(json.dumps(data))
        args[args.index("--ann") + 1] = str(ann)
    elif case == "classifier option":
        args.append("--dilate")
    elif case == "unknown detector":
        args[args.index("--detector") + 1] = "ssd_vgg16_fpn"
    elif case == "no rounds":
        args += ["--rounds", "0"]
    else:
        args = [*args[2:], "--rounds", "2", "--arch", "mobilenet_v2"]
    try:
        code = train_main(args)
    except SystemExit as exc:  # argparse's exit for a bad option
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and "Traceback" not in "\n".join(err)


def test_eval_refuses_map_options_for_a_detector_and_detectors_for_cam_paths(scenes, tmp_path, capsys):
    model, meta = build_detector("fasterrcnn_mobilenet_v2_fpn", list("abcdef"), [1, 2, 3, 4, 5, 6], None, 64)
    meta["class_names"] = [c["name"] for c in json.loads(
        (scenes / "annotations" / "instances_val.json").read_text())["categories"]]
    path = tmp_path / "det.pt"
    atomic_torch_save(detector_payload(model, meta), path)
    common = ["--images", str(scenes / "val"), "--ann", str(scenes / "annotations" / "instances_val.json"),
              "--checkpoint", str(path), "--out", str(tmp_path / "e"), "--workers", "0"]
    assert eval_main([*common, "--tta", "--recipe", "seed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a detector, which has no class maps: --recipe, --tta" in err[0]
    assert eval_main([*common, "--box-workers", "0"]) == 0  # the same checkpoint without them


def test_an_image_without_pseudo_boxes_is_a_negative_sample(scenes, tmp_path):
    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    empty = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty]
    ann = tmp_path / "pseudo.json"
    ann.write_text(json.dumps(data))
    samples = DetectionSamples(CocoIndex(ann, scenes / "train"), train=True)
    pixels, target = samples[0]
    assert pixels.dtype == torch.uint8 and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    model, _ = build_detector("fasterrcnn_mobilenet_v2_fpn", list("abcdef"), [1, 2, 3, 4, 5, 6], DEMO_CHECKPOINT, 64)
    model.train()
    batch, skipped = collate_detection([samples[0], samples[1]])
    losses = model([im.float() / 255 for im in batch[0]], batch[1])
    assert not skipped and all(torch.isfinite(v) for v in losses.values())
    plain = DetectionSamples(CocoIndex(ann, scenes / "train"), train=False)
    mirrored = 0
    for i in range(1, len(samples)):  # a training sample is its image, or its mirror image with mirrored boxes
        (p, t), (q, u) = samples[i], plain[i]
        width = q.shape[-1]
        if not torch.equal(p, q):
            assert torch.equal(p, q.flip(-1))
            u = {"boxes": torch.stack([width - u["boxes"][:, 2], u["boxes"][:, 1], width - u["boxes"][:, 0],
                                       u["boxes"][:, 3]], 1), "labels": u["labels"]}
            mirrored += 1
        assert torch.equal(t["boxes"], u["boxes"]) and torch.equal(t["labels"], u["labels"])
    assert 0 < mirrored < len(samples) - 1
