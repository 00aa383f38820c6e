"""`python -m train`: a real fine-tune, resume equality, torchrun with 2 CPU processes, bad input."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from camloc.evaluation import classification_ap
from camloc.io.data import CocoIndex, CocoMultiLabel, eval_transform
from camloc.localize import Localizer
from camloc.models import load_model
from eval.cli import main as eval_main
from tests.conftest import COCO_MINI, IMAGENET1001, ROOT, VAL_ANN, VAL_IMAGES
from train import cli
from train.cli import main

pytestmark = pytest.mark.realdata
TRAIN_IMAGES = COCO_MINI / "train2017"
TRAIN_ANN = COCO_MINI / "annotations" / "instances_train2017_mini.json"


def tiny_args(out, *extra):
    """A randomly initialised ResNet-18 on 24 images at 64 px: seconds per epoch."""
    return ["--images", str(TRAIN_IMAGES), "--ann", str(TRAIN_ANN), "--out", str(out), "--arch", "resnet18",
            "--weights", "none", "--img-size", "64", "--limit", "24", "--batch-size", "8", "--workers", "0",
            "--epochs", "3", "--lr", "1e-3", *extra]


@pytest.mark.slow
def test_real_fine_tune_beats_chance_and_its_best_checkpoint_is_usable(tmp_path):
    out = tmp_path / "run"
    assert main(["--images", str(TRAIN_IMAGES), "--ann", str(TRAIN_ANN), "--val-images", str(VAL_IMAGES),
                 "--val-ann", str(VAL_ANN), "--arch", "mobilenet_v2", "--weights", str(IMAGENET1001),
                 "--freeze-backbone", "--epochs", "4", "--img-size", "224", "--batch-size", "32", "--lr", "1e-2",
                 "--workers", "2", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    # chance level: the mAP of scores that ignore the image (each class's training frequency)
    val = CocoMultiLabel(CocoIndex(VAL_ANN, VAL_IMAGES), eval_transform(32))
    targets = val.targets().numpy()
    chance, _ = classification_ap(np.tile(np.random.default_rng(0).random(80), (len(targets), 1)), targets)
    best = max(r["val_map"] for r in log)
    print(f"\nvalidation classification mAP after 4 epochs: {best:.3f} (chance {chance:.3f})")
    assert best > 3 * chance and best > 0.3
    model, meta = load_model(out / "best.pt")
    assert meta["arch"] == "mobilenet_v2" and meta["coco_category_ids"][:3] == [1, 2, 3]
    # the per-class gating thresholds of the 369 training images (camloc.calibration)
    assert meta["calibration"]["images"] == 369 and len(meta["class_thresholds"]) == 80
    assert sum(t > 0.001 for t in meta["class_thresholds"]) >= 40
    assert len(Localizer(model, meta, recipe="seed", max_dets=0).predict(VAL_IMAGES / "000000005001.jpg")) >= 80
    assert eval_main(["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(out / "best.pt"),
                      "--out", str(tmp_path / "eval"), "--limit", "8", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 8


def final_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    assert main(tiny_args(tmp_path / "whole")) == 0
    original = cli.train_epoch

    def killed_in_epoch_two(net, model, meta, loader, *args):
        if args[-1] == 1:  # epoch index 1: die after the first optimisation step
            batches = iter(loader)
            original(net, model, meta, [next(batches)], *args)
            raise KeyboardInterrupt
        return original(net, model, meta, loader, *args)

    monkeypatch.setattr(cli, "train_epoch", killed_in_epoch_two)
    assert main(tiny_args(tmp_path / "cut")) == 130
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["train_state"]["epoch"] == 1
    monkeypatch.setattr(cli, "train_epoch", original)
    assert main(tiny_args(tmp_path / "cut", "--resume")) == 0
    whole, resumed = final_weights(tmp_path / "whole" / "last.pt"), final_weights(tmp_path / "cut" / "last.pt")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_with_two_cpu_processes_writes_one_checkpoint_set(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "train",
                             *tiny_args(out, "--epochs", "2", "--device", "cpu")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".camloc.lock", "best.pt", "last.pt", "log.jsonl"]  # one set
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert result.stdout.count("epoch=2") == 1  # only rank 0 reports
    load_model(out / "last.pt")


def test_bad_input_and_nan_loss(tmp_path, monkeypatch, capsys):
    assert main(tiny_args(tmp_path / "x", "--images", str(tmp_path / "nowhere"))) == 2
    assert "does not exist" in capsys.readouterr().err
    no_categories = tmp_path / "nocat.json"
    no_categories.write_text(json.dumps(dict(json.loads(TRAIN_ANN.read_text()), categories=[])))
    assert main(tiny_args(tmp_path / "x", "--ann", str(no_categories))) == 2
    assert "no categories" in capsys.readouterr().err

    # an undecodable image is skipped and counted, not fatal
    images = tmp_path / "images"
    shutil.copytree(TRAIN_IMAGES, images)
    first = sorted(json.loads(TRAIN_ANN.read_text())["images"], key=lambda im: im["id"])[0]["file_name"]
    (images / first).write_bytes(b"not a jpeg")
    assert main(tiny_args(tmp_path / "skip", "--images", str(images), "--epochs", "1")) == 0
    record = json.loads((tmp_path / "skip" / "log.jsonl").read_text())
    assert record["skipped_images"] == 1 and record["unreadable_images"] == [first]
    assert "warning: 1 training and 0 validation images could not be read" in capsys.readouterr().err

    # a NaN loss stops with a clear message and keeps the last good checkpoint
    out = tmp_path / "nan"
    assert main(tiny_args(out, "--epochs", "1")) == 0
    good = final_weights(out / "last.pt")
    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "forward", lambda self, x, y: (x * float("nan")).mean())
    assert main(tiny_args(out, "--epochs", "2", "--resume-anyway")) == 2
    assert "the loss became NaN or infinite in epoch 2" in capsys.readouterr().err
    kept = final_weights(out / "last.pt")
    assert all(torch.equal(good[k], kept[k]) for k in good)
