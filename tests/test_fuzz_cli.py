"""Fuzz: hostile command lines and files for ``python -m eval`` and ``python -m train``.

Contract: a bad argument or file ends the run with exit status 2 and one ``error:`` line on stderr
(argparse's usage line may precede it), never a traceback, and leaves no output file; a run over a
folder where some images are unreadable finishes, lists them, and warns once.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from camloc.demo import DEMO_CHECKPOINT
from camloc.models.classes import COCO_CATEGORIES
from eval.cli import main as eval_main
from tests.fuzz_support import scene_data, torch_threads
from train.cli import main as train_main

OUTPUTS = ("detections.json", "metrics.json", "last.pt", "best.pt", "log.jsonl")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Four 64-px synthetic scenes with the demo checkpoint's six categories."""
    return scene_data(tmp_path_factory.mktemp("data"), 4, seed=0)


def run(main, argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` → (exit status, stderr), argparse's exit included; any other exception fails."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_refused(main, argv: list[str], capsys, out: Path, expect: str | None = None) -> str:
    code, err = run(main, argv, capsys)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, f"exit {code}, stderr: {err[-2000:]}"
    assert "error: unexpected" not in errors[0], errors[0]  # a boundary's own error, not a caught bug
    if expect:
        assert expect in errors[0], errors[0]
    assert not any((out / name).exists() for name in OUTPUTS) if out.is_dir() else True
    return errors[0]


def write_ann(tmp_path: Path, data: dict, change) -> Path:
    ann = json.loads(json.dumps(data["ann"]))
    change(ann)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path


def images_copy(tmp_path: Path, data: dict, damage: dict[int, bytes]) -> Path:
    """The four images, with the ones at the given positions overwritten by ``damage``."""
    folder = tmp_path / "images"
    shutil.copytree(data["images"], folder)
    for index, content in damage.items():
        (folder / data["ann"]["images"][index]["file_name"]).write_bytes(content)
    return folder


def set_image(index: int, **fields):
    return lambda ann: ann["images"][index].update(fields)


def drop_image_key(index: int, key: str):
    return lambda ann: ann["images"][index].pop(key)


ANN_CHANGES = {
    "image-without-file-name": drop_image_key(0, "file_name"),
    "file-name-not-a-string": set_image(0, file_name=5),
    "file-name-absolute": set_image(0, file_name="/etc/hostname"),
    "file-name-escapes": set_image(0, file_name="../ann.json"),
    "image-id-string": set_image(0, id="1"),
    "image-id-fraction": set_image(0, id=1.5),
    "image-id-huge": set_image(0, id=2**64),
    "duplicate-image-id": set_image(1, id=1),
    "nan-bbox": lambda ann: ann["annotations"][0].update(bbox=[0, 0, float("nan"), 3]),
    "no-categories": lambda ann: ann.update(categories=[]),
    "category-name-not-a-string": lambda ann: ann["categories"][0].update(name=5),
    "images-not-a-list": lambda ann: ann.update(images={"id": 1}),
    "category-id-string": lambda ann: ann["categories"][0].update(id="1"),
}


# ----------------------------------------------------------------------------------------------
# python -m eval
# ----------------------------------------------------------------------------------------------

def eval_argv(data: dict, out: Path, *extra: str, images=None, ann=None, checkpoint=None) -> list[str]:
    return ["--images", str(images or data["images"]), "--ann", str(ann or data["ann_path"]), "--checkpoint",
            str(checkpoint or DEMO_CHECKPOINT), "--out", str(out), "--workers", "0", "--img-size", "64",
            "--box-workers", "0", *extra]


EVAL_OPTIONS = [["--img-size", "0"], ["--img-size", "-1"], ["--img-size", "31"], ["--img-size", "100000"],
                ["--batch-size", "0"], ["--batch-size", "100000"], ["--workers", "-1"], ["--workers", "10000"],
                ["--limit", "0"], ["--limit", "-1"],
                ["--threshold", "nan"], ["--threshold", "2"], ["--threshold", "x"], ["--classes", "topk:-1"],
                ["--classes", "prob:nan"], ["--boxes", "x"], ["--method", "x"], ["--recipe", "bogus"],
                ["--device", "foo"], ["--device", "cuda:99"], ["--device", ""], ["--batch-size", "x"],
                ["--unknown"]]
if not torch.cuda.is_available():
    EVAL_OPTIONS.append(["--device", "cuda"])


@pytest.mark.parametrize("options", EVAL_OPTIONS, ids=[" ".join(o) for o in EVAL_OPTIONS])
def test_eval_bad_option(data, tmp_path, capsys, options):
    assert_refused(eval_main, eval_argv(data, tmp_path / "out", *options), capsys, tmp_path / "out")


@pytest.mark.parametrize("name", sorted(ANN_CHANGES))
def test_eval_bad_annotation_file(data, tmp_path, capsys, name):
    ann = write_ann(tmp_path, data, ANN_CHANGES[name])
    assert_refused(eval_main, eval_argv(data, tmp_path / "out", ann=ann), capsys, tmp_path / "out")


def coco_categories(ann: dict) -> None:
    ann["categories"] = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES]


def bad_files(tmp_path: Path, data: dict) -> dict[str, dict[str, Path]]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    payload = torch.load(DEMO_CHECKPOINT, weights_only=True)
    payload["state_dict"]["classifier.1.bias"][0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    (tmp_path / "list.json").write_text("[]")
    torch.save(payload["state_dict"], tmp_path / "list.pth")
    return {
        "out-is-a-file": {"out": tmp_path / "a-file"},
        "out-under-a-file": {"out": tmp_path / "a-file" / "sub"},
        "out-not-creatable": {"out": Path("/proc/camloc-fuzz/out")},
        "images-missing": {"images": tmp_path / "nowhere"},
        "images-is-a-file": {"images": tmp_path / "a-file"},
        "ann-missing": {"ann": tmp_path / "nowhere.json"},
        "ann-not-json": {"ann": tmp_path / "garbage.pt"},
        "ann-too-deep": {"ann": _write(tmp_path / "deep.json", "[" * 100_000)},
        "checkpoint-missing": {"checkpoint": tmp_path / "nowhere.pt"},
        "checkpoint-folder": {"checkpoint": tmp_path},
        "checkpoint-garbage": {"checkpoint": tmp_path / "garbage.pt"},
        "checkpoint-nan": {"checkpoint": tmp_path / "nan.pt"},
        "checkpoint-sidecar-list": {"checkpoint": tmp_path / "list.pth"},
        "demo-checkpoint-on-coco-categories": {"ann": write_ann(tmp_path, data, coco_categories)},
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


EVAL_FILES = ["out-is-a-file", "out-under-a-file", "out-not-creatable", "images-missing", "images-is-a-file",
              "ann-missing", "ann-not-json", "ann-too-deep", "checkpoint-missing", "checkpoint-folder",
              "checkpoint-garbage", "checkpoint-nan", "checkpoint-sidecar-list", "demo-checkpoint-on-coco-categories"]


@pytest.mark.parametrize("name", EVAL_FILES)
def test_eval_bad_file(data, tmp_path, capsys, name):
    paths = bad_files(tmp_path, data)[name]
    out = paths.pop("out", tmp_path / "out")
    assert_refused(eval_main, eval_argv(data, out, **paths), capsys, out)


def changed(record: str, **fields) -> str:
    """A valid progress record with some fields replaced (``None``: removed)."""
    data = json.loads(record)
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None})


def column(values, dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype).tobytes()).decode()


NAN_DETECTION = {"image_id": column([1], "<i8"), "category_id": column([1], "<i8"), "bbox": column([0, 0, 1, 1], "<f8"),
                 "score": column([float("nan")], "<f8")}
RESUME_CASES = {
    "header-garbage": lambda header, det: ["{not json", det],
    "header-not-a-dict": lambda header, det: ["[1, 2]", det],
    "record-not-a-dict": lambda header, det: [header, "[1]", det],
    "record-unknown-image": lambda header, det: [header, changed(det, images=[999]), det],
    "record-string-id": lambda header, det: [header, changed(det, images=["1"]), det],
    "record-detections-not-columns": lambda header, det: [header, changed(det, detections=5), det],
    "record-not-base64": lambda header, det: [header, changed(det, detections=dict(
        json.loads(det)["detections"], score="!!")), det],
    "record-nan-score": lambda header, det: [header, changed(det, detections=NAN_DETECTION), det],
    "record-without-detections": lambda header, det: [header, changed(det, detections=None), det],
    "record-stamps-mismatch": lambda header, det: [header, changed(det, stamps=[[1, 2]]), det],
    "record-unreadable-not-pairs": lambda header, det: [header, changed(det, unreadable=[[1]]), det],
    "torn-middle-line": lambda header, det: [header, '{"images": [1], "detec', det],
}


def interrupted_progress(data: dict, tmp_path: Path, capsys) -> tuple[Path, str, str]:
    """A finished run's settings header and one valid progress record."""
    out = tmp_path / "out"
    calls = []
    from camloc.localize import Localizer

    original = Localizer.analyze_batch

    def stop(self, pixels, classes=None, views=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, pixels, classes, views)

    Localizer.analyze_batch = stop
    try:
        assert run(eval_main, eval_argv(data, out, "--batch-size", "2"), capsys)[0] == 130
    finally:
        Localizer.analyze_batch = original
    lines = (out / ".progress.jsonl").read_text().splitlines()
    return out, lines[0], lines[1]


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_eval_corrupt_progress_file(data, tmp_path, capsys, name):
    out, header, record = interrupted_progress(data, tmp_path, capsys)
    (out / ".progress.jsonl").write_text("\n".join(RESUME_CASES[name](header, record)) + "\n")
    assert_refused(eval_main, eval_argv(data, out, "--batch-size", "2", "--resume"), capsys, out, "--resume")


@pytest.mark.parametrize("torn", ["half", "all-but-the-newline"])
def test_eval_resume_drops_a_torn_last_line(data, tmp_path, capsys, torn):
    """A last line without its newline was cut by a kill, even when all its JSON arrived: it is not counted
    (counted, then cut off before appending, it used to leave its images without a result)."""
    out, header, record = interrupted_progress(data, tmp_path, capsys)
    tail = record[: len(record) // 2] if torn == "half" else record
    (out / ".progress.jsonl").write_text(f"{header}\n" + tail)
    code, err = run(eval_main, eval_argv(data, out, "--batch-size", "2", "--resume"), capsys)
    assert code == 0, [line for line in err.splitlines() if "error" in line]
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 4


TWICE = {"two-lines": lambda header, det: [header, det, det],
         "finished-and-unreadable": lambda header, det: [header, changed(det, unreadable=[
             [json.loads(det)["images"][0], "unreadable"]])]}


@pytest.mark.parametrize("name", sorted(TWICE))
def test_eval_progress_with_an_image_twice_is_refused(data, tmp_path, capsys, name):
    """Only two runs writing to one folder (or damage) put an image in the progress twice; counting both
    doubled its detections silently."""
    out, header, record = interrupted_progress(data, tmp_path, capsys)
    (out / ".progress.jsonl").write_text("\n".join(TWICE[name](header, record)) + "\n")
    image = json.loads(record)["images"][0]
    assert_refused(eval_main, eval_argv(data, out, "--batch-size", "2", "--resume"), capsys, out,
                   f"damaged progress: image {image} twice")


CORRUPT = {"truncated": lambda data: data[: len(data) // 3], "text": lambda data: b"not an image",
           "empty": lambda data: b"", "bad-header": lambda data: data[:2] + b"\x00" * 40 + data[42:]}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_eval_skips_and_lists_unreadable_images(data, tmp_path, capsys, kind):
    first = data["images"] / data["ann"]["images"][1]["file_name"]
    images = images_copy(tmp_path, data, {1: CORRUPT[kind](first.read_bytes())})
    code, err = run(eval_main, eval_argv(data, tmp_path / "out", images=images), capsys)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [u["file_name"] for u in metrics["unreadable_images"]] == [data["ann"]["images"][1]["file_name"]]
    assert metrics["num_images"] == 3
    assert sum("warning:" in line for line in err.splitlines()) == 1


def test_eval_with_every_image_unreadable_is_an_error(data, tmp_path, capsys):
    images = images_copy(tmp_path, data, dict.fromkeys(range(4), b"broken"))
    assert_refused(eval_main, eval_argv(data, tmp_path / "out", images=images), capsys, tmp_path / "out",
                   "could be read")


# ----------------------------------------------------------------------------------------------
# python -m train
# ----------------------------------------------------------------------------------------------

def train_argv(data: dict, out: Path, *extra: str, images=None, ann=None) -> list[str]:
    return ["--images", str(images or data["images"]), "--ann", str(ann or data["ann_path"]), "--out", str(out),
            "--arch", "mobilenet_v2", "--weights", "none", "--img-size", "32", "--batch-size", "2", "--epochs", "1",
            "--workers", "0", *extra]


TRAIN_OPTIONS = [["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"], ["--lr", "-1"], ["--warmup-epochs", "nan"],
                 ["--warmup-epochs", "-1"], ["--warmup-epochs", "inf"], ["--backbone-lr-scale", "nan"],
                 ["--backbone-lr-scale", "-1"], ["--weight-decay", "nan"], ["--weight-decay", "-1"],
                 ["--workers", "-1"], ["--workers", "10000"], ["--batch-size", "100000"],
                 ["--img-size", "0"], ["--img-size", "-1"], ["--img-size", "100000"],
                 ["--limit", "-1"], ["--limit", "0"], ["--val-limit", "-1"], ["--epochs", "0"], ["--batch-size", "0"],
                 ["--device", "foo"], ["--device", "cuda:99"], ["--seed", "-1"], ["--seed", str(2**70)],
                 ["--val-images", "somewhere"], ["--mode", "x"], ["--optimizer", "x"], ["--arch", "bogus"],
                 ["--arch", "vit_b_16"], ["--dilate", "--arch", "resnet18"], ["--weights", "/nowhere.pt"],
                 ["--lr", "1e400"]]
if not torch.cuda.is_available():
    TRAIN_OPTIONS.append(["--device", "cuda"])


@pytest.mark.parametrize("options", TRAIN_OPTIONS, ids=[" ".join(o) for o in TRAIN_OPTIONS])
def test_train_bad_option(data, tmp_path, capsys, options):
    assert_refused(train_main, train_argv(data, tmp_path / "out", *options), capsys, tmp_path / "out")


@pytest.mark.parametrize("name", sorted(ANN_CHANGES))
def test_train_bad_annotation_file(data, tmp_path, capsys, name):
    ann = write_ann(tmp_path, data, ANN_CHANGES[name])
    assert_refused(train_main, train_argv(data, tmp_path / "out", ann=ann), capsys, tmp_path / "out")


@pytest.mark.parametrize("name", ["out-is-a-file", "out-under-a-file", "out-not-creatable", "images-missing",
                                  "ann-not-json", "ann-too-deep", "checkpoint-garbage", "checkpoint-nan"])
def test_train_bad_file(data, tmp_path, capsys, name):
    paths = bad_files(tmp_path, data)[name]
    out = paths.pop("out", tmp_path / "out")
    extra = ["--weights", str(paths.pop("checkpoint")), "--arch", "mobilenet_v2"] if "checkpoint" in paths else []
    assert_refused(train_main, train_argv(data, out, *extra, **paths), capsys, out)


def last_checkpoint(data: dict, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "out"
    assert run(train_main, train_argv(data, out), capsys)[0] == 0
    (out / "best.pt").unlink()
    (out / "log.jsonl").unlink()
    return out / "last.pt"


def _edit_state(path: Path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


RESUME_CHECKPOINTS = {
    "garbage": lambda p: p.write_bytes(b"garbage"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "no-train-state": lambda p: _edit_state(p, lambda c: c.pop("train_state")),
    "epoch-string": lambda p: _edit_state(p, lambda c: c["train_state"].update(epoch="x")),
    "epoch-negative": lambda p: _edit_state(p, lambda c: c["train_state"].update(epoch=-3)),
    "optimizer-missing": lambda p: _edit_state(p, lambda c: c["train_state"].pop("optimizer")),
    "optimizer-garbage": lambda p: _edit_state(p, lambda c: c["train_state"].update(optimizer={"state": 5})),
    "history-garbage": lambda p: _edit_state(p, lambda c: c["train_state"].update(history=["{", 3])),
    "best-nan": lambda p: _edit_state(p, lambda c: c["train_state"].update(best=float("nan"))),
    "nan-weights": lambda p: _edit_state(p, lambda c: c["state_dict"]["classifier.1.bias"].fill_(float("nan"))),
    "other-arch": lambda p: _edit_state(p, lambda c: c.update(state_dict={"fc.weight": torch.zeros(6, 512)})),
    "no-fingerprint": lambda p: _edit_state(p, lambda c: c["train_state"].pop("fingerprint")),
    "fingerprint-garbage": lambda p: _edit_state(p, lambda c: c["train_state"].update(fingerprint=[1])),
    "fingerprint-of-other-settings": lambda p: _edit_state(p, lambda c: c["train_state"]["fingerprint"].update(
        lr="0.5")),
}


@pytest.mark.parametrize("name", sorted(RESUME_CHECKPOINTS))
def test_train_corrupt_resume_checkpoint(data, tmp_path, capsys, name):
    last = last_checkpoint(data, tmp_path, capsys)
    RESUME_CHECKPOINTS[name](last)
    code, err = run(train_main, train_argv(data, last.parent, "--resume"), capsys)
    assert "Traceback" not in err and "error: unexpected" not in err and code == 2, err[-2000:]
    assert next(line for line in err.splitlines() if "error:" in line).count("last.pt") == 1
    assert not (last.parent / "best.pt").exists()


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_train_skips_and_lists_unreadable_images(data, tmp_path, capsys, kind):
    first = data["images"] / data["ann"]["images"][2]["file_name"]
    images = images_copy(tmp_path, data, {2: CORRUPT[kind](first.read_bytes())})
    code, err = run(train_main, train_argv(data, tmp_path / "out", "--epochs", "2", images=images), capsys)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    name = data["ann"]["images"][2]["file_name"]
    assert all(r["skipped_images"] == 1 and r["unreadable_images"] == [name] for r in log)
    assert sum("warning:" in line for line in err.splitlines()) == 1


def test_train_with_every_image_unreadable_is_an_error(data, tmp_path, capsys):
    images = images_copy(tmp_path, data, dict.fromkeys(range(4), b"broken"))
    assert_refused(train_main, train_argv(data, tmp_path / "out", images=images), capsys, tmp_path / "out",
                   "could be read")


def test_train_validation_skips_unreadable_images(data, tmp_path, capsys):
    images = images_copy(tmp_path, data, {0: b"broken"})
    argv = train_argv(data, tmp_path / "out", "--val-images", str(images), "--val-ann", str(data["ann_path"]),
                      "--val-limit", "4")
    code, err = run(train_main, argv, capsys)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    record = json.loads((tmp_path / "out" / "log.jsonl").read_text())
    assert record["val_unreadable_images"] == [data["ann"]["images"][0]["file_name"]]


def test_eval_warns_once_of_an_annotation_id_0(data, tmp_path, capsys):
    ann = write_ann(tmp_path, data, lambda a: a["annotations"][0].update(id=0))
    code, err = run(eval_main, eval_argv(data, tmp_path / "out", ann=ann), capsys)
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert code == 0 and len(warnings) == 1 and "has id 0" in warnings[0], err[-2000:]
