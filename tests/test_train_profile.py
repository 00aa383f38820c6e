"""`python -m train --profile`: seconds per stage and the bound, the steady-state rate beside the whole epoch's, and
batch size and loaders sized to the device when not given."""

import json

import pytest
import torch

from camloc.runtime.devices import GPU_BATCH, MAX_GPU_LOADERS, loader_defaults
from tests.conftest import COCO_MINI, VAL_ANN, VAL_IMAGES
from train.cli import main, parse_args
from train.loop import SteadyRate, warmup_steps

TRAIN_IMAGES = COCO_MINI / "train2017"
TRAIN_ANN = COCO_MINI / "annotations" / "instances_train2017_mini.json"


@pytest.mark.realdata
def test_profile_names_every_stage_and_the_log_keeps_both_rates(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--images", str(TRAIN_IMAGES), "--ann", str(TRAIN_ANN), "--val-images", str(VAL_IMAGES),
                 "--val-ann", str(VAL_ANN), "--out", str(out), "--arch", "resnet18", "--weights", "none",
                 "--img-size", "64", "--limit", "48", "--batch-size", "4", "--workers", "0", "--epochs", "1",
                 "--no-calibrate", "--profile"]) == 0
    err = capsys.readouterr().err
    assert "train: 48 samples on cpu, batch 4 per process, 0 loader workers" in err and "bound by: " in err
    [record] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stages = {row["stage"] for row in record["profile"]["stages"]}
    assert {"wait for data", "forward", "backward", "optimizer step", "validation", "checkpoints"} <= stages
    assert record["images"] == 48 and record["steady_images_per_s"] > 0
    # the whole epoch (validation, checkpoints) is slower than its steady steps
    assert record["epoch_images_per_s"] < record["images_per_s"]


def test_loaders_and_batch_are_sized_to_the_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    batch, workers = loader_defaults(cuda, None, None, 32, 4)
    assert batch == GPU_BATCH and 1 <= workers <= MAX_GPU_LOADERS
    assert loader_defaults(cuda, 16, 3, 32, 4) == (16, 3)  # what the user gives stays
    assert loader_defaults(cpu, None, None, 32, 4) == (32, 4)
    assert loader_defaults(cuda, None, None, 32, 4, processes=64)[1] == 1  # shared by a node's processes


def test_cpu_defaults_of_train_stay_and_given_values_win(tmp_path):
    common = ["--images", "x", "--ann", "y", "--out", str(tmp_path), "--device", "cpu"]
    args = parse_args(common)
    assert (args.batch_size, args.workers) == (32, 4)
    args = parse_args([*common, "--batch-size", "8", "--workers", "0"])
    assert (args.batch_size, args.workers) == (8, 0)


def test_steady_rate_leaves_the_warmup_out():
    assert warmup_steps(1000) == 50 and warmup_steps(100) == 10 and warmup_steps(3) == 1 and warmup_steps(1) == 0
    rate = SteadyRate(torch.device("cpu"), warmup=2)
    for step in range(1, 6):
        rate.step(step, 10)
    assert rate.images == 30 and rate.rate() > 0
    assert SteadyRate(torch.device("cpu"), warmup=0).rate() is None
