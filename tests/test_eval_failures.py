"""A failure anywhere in `python -m eval` reaches the user as itself, naming its stage; the progress file keeps only
whole batches and `--resume` continues; a batch that runs out of device memory is run in halves; at most
`--max-dets` detections per image."""

import json

import numpy as np
import pytest
import torch

import camloc.boxes.grid as grid_module
import camloc.pipeline.localizer as localizer_module
from camloc.io.reader import SplitImages
from camloc.localize import Localizer
from camloc.models import CamModel
from camloc.pipeline.boxstage import BoxStage
from camloc.pipeline.detections import best_per_image
from eval import progress
from eval import run as eval_run
from eval.cli import main
from tests.conftest import COCO80, VAL_ANN, VAL_IMAGES

pytestmark = pytest.mark.realdata


def eval_args(out, *extra):
    """8 real val images in batches of 4, small inputs, the boxes on the grid (all on the main process's device)."""
    return ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(COCO80), "--out", str(out),
            "--limit", "8", "--batch-size", "4", "--img-size", "224", "--recipe", "multilevel", "--box-scale", "2",
            "--workers", "0", "--box-workers", "0", *extra]


def outputs(out):
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("images_per_second")
    return json.loads((out / "detections.json").read_text()), metrics


def failing_on_call(original, call: int, error: BaseException):
    """``original`` that raises ``error`` on its ``call``-th call (1-based) and from then on."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) >= call:
            raise error
        return original(*args, **kwargs)

    return wrapped


def progress_lines(out):
    """The batch lines of the progress file (every one a whole JSON record)."""
    lines = progress.progress_path(out).read_text().splitlines()[1:]
    return [json.loads(line) for line in lines]


class FailingStage(BoxStage):
    """A box worker's job that fails (in the worker process: this class is imported there by name)."""

    def __call__(self, job):
        raise ValueError("worker fell over on purpose")


#: A box worker, so that the first batch's job is still in flight when the second batch fails (the case whose
#: cleanup used to write it as an empty batch and report an IndexError instead of the failure).
IN_FLIGHT = ["--box-workers", "1"]
INJECTIONS = {
    "loader": (lambda mp: mp.setattr(SplitImages, "__getitem__", failing_on_call(
        SplitImages.__getitem__, 6, RuntimeError("disk gone"))), ["--workers", "1"], "disk gone",
        "read + decode (loader workers)"),
    "forward": (lambda mp: mp.setattr(CamModel, "forward", failing_on_call(
        CamModel.forward, 2, RuntimeError("CUDA error: an illegal memory access"))), IN_FLIGHT,
        "illegal memory access", "forward"),
    "maps": (lambda mp: mp.setattr(localizer_module, "class_activation_maps", failing_on_call(
        localizer_module.class_activation_maps, 2, RuntimeError("bad maps"))), IN_FLIGHT, "bad maps", "maps"),
    "box stage": (lambda mp: mp.setattr(grid_module, "_grid_boxes", failing_on_call(
        grid_module._grid_boxes, 2, RuntimeError("no boxes today"))), IN_FLIGHT, "no boxes today",
        "box stage (device)"),
    "workers": (lambda mp: mp.setattr(eval_run, "BoxStage", FailingStage),
                ["--box-workers", "1", "--box-scale", "full"], "worker fell over on purpose",
                "host box stage (box workers)"),
    "writing": (lambda mp: mp.setattr(progress, "write_batch", failing_on_call(
        progress.write_batch, 2, OSError(28, "No space left on device"))), [], "No space left on device",
        "write progress"),
}


@pytest.mark.parametrize("where", list(INJECTIONS))
def test_a_failure_in_any_stage_reaches_the_user_as_itself(tmp_path, monkeypatch, capsys, where):
    inject, extra, message, stage = INJECTIONS[where]
    inject(monkeypatch)
    assert main(eval_args(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and f"stage: {stage}" in errors[0], err[-3:]
    assert "IndexError" not in errors[0] and "Traceback" not in "\n".join(err)
    for line in progress_lines(tmp_path / "run"):  # only whole batches
        assert len(line["images"]) + len(line["unreadable"]) == 4


@pytest.mark.slow
def test_resume_after_a_failure_gives_the_uninterrupted_outputs(tmp_path, monkeypatch):
    assert main(eval_args(tmp_path / "whole")) == 0
    inject = INJECTIONS["forward"][0]
    with monkeypatch.context() as patched:
        inject(patched)
        assert main(eval_args(tmp_path / "run")) == 2
    assert len(progress_lines(tmp_path / "run")) <= 1  # the first batch, written whole, or not at all
    assert main(eval_args(tmp_path / "run", "--resume")) == 0
    assert outputs(tmp_path / "run") == outputs(tmp_path / "whole")


def out_of_memory_above(limit: int):
    """``Localizer.analyze_batch`` as on a device that holds ``limit`` images at once."""
    original = Localizer.analyze_batch

    def analyze_batch(self, pixels, *args, **kwargs):
        if len(pixels) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, pixels, *args, **kwargs)

    return analyze_batch


def test_a_batch_out_of_device_memory_is_run_in_halves(tmp_path, monkeypatch, capsys):
    assert main(eval_args(tmp_path / "halves", "--batch-size", "2")) == 0
    expected = outputs(tmp_path / "halves")
    monkeypatch.setattr(Localizer, "analyze_batch", out_of_memory_above(2))
    assert main(eval_args(tmp_path / "run")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "out of device memory" in line]
    assert len(notes) == 1 and "with 4 images" in notes[0] and "with 2 at a time" in notes[0]  # then kept at 2
    assert outputs(tmp_path / "run") == expected


def test_an_image_that_does_not_fit_alone_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Localizer, "analyze_batch", out_of_memory_above(0))
    assert main(eval_args(tmp_path / "run")) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    first = sorted(json.loads(VAL_ANN.read_text())["images"], key=lambda im: im["id"])[0]
    assert f"image {first['id']} ({first['file_name']}) does not fit in device memory even alone" in line
    assert "unexpected" not in line


def test_at_most_max_dets_detections_per_image_the_best_scored(tmp_path):
    assert main(eval_args(tmp_path / "all", "--max-dets", "0", "--box-scale", "8")) == 0
    assert main(eval_args(tmp_path / "capped", "--max-dets", "30", "--box-scale", "8")) == 0
    every, _ = outputs(tmp_path / "all")
    capped, metrics = outputs(tmp_path / "capped")
    image = np.array([d["image_id"] for d in every])
    score = np.array([d["score"] for d in every])
    assert np.bincount(image).max() > 30  # the cap matters here
    kept = best_per_image(image, score, 30)
    assert capped == [d for d, keep in zip(every, kept) if keep]
    assert metrics["settings"]["max_dets"] == "30" and metrics["num_detections"] == len(capped)


def test_best_per_image_keeps_each_images_best_in_their_order():
    image = np.array([5, 5, 5, 2, 2, 5])
    score = np.array([0.1, 0.9, 0.5, 0.3, 0.3, 0.9])
    assert best_per_image(image, score, 2).tolist() == [False, True, False, True, True, True]
    assert best_per_image(image, score, 0).all() and best_per_image(image, score, 1).sum() == 2
