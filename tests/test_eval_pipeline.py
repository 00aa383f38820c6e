"""The evaluation pipeline: box workers and torchrun ranks give the same outputs as one process."""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from camloc.evaluation import Detections
from camloc.localize import Localizer
from camloc.runtime.workerpool import OrderedPool
from eval import progress
from eval import run as eval_run
from eval.cli import main
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES


def slow_square(x: int) -> int:
    import time

    time.sleep(0.05 * (x % 3))  # later items often finish first
    return x * x


@pytest.mark.parametrize("workers", [0, 3])
def test_ordered_pool_yields_results_in_submission_order(workers):
    with OrderedPool(slow_square, workers, max_pending=4) as pool:
        got = [r for x in range(12) for r in pool.submit(x)]
        got += list(pool.drain())
    assert got == [x * x for x in range(12)]


def eval_args(out, *extra):
    return ["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(COCO80), "--out", str(out),
            "--workers", "1", "--limit", "12", "--batch-size", "4", *extra]


def outputs(out):
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("images_per_second")
    return json.loads((out / "detections.json").read_text()), metrics


@pytest.fixture
def one_thread():
    """One intra-op thread, as each torchrun rank has (OMP_NUM_THREADS=1): the network's float32 sums
    then run in the same order in every process, so outputs can be compared with ``==``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.realdata
@pytest.mark.slow
def test_box_workers_and_torchrun_ranks_change_nothing(tmp_path, one_thread):
    assert main(eval_args(tmp_path / "inline", "--box-workers", "0")) == 0
    inline = outputs(tmp_path / "inline")
    assert inline[1]["wsol"]["num_maps"] > 12 and inline[1]["wsol"]["MaxBoxAccV2"] > 0
    assert main(eval_args(tmp_path / "pool", "--box-workers", "2")) == 0
    assert outputs(tmp_path / "pool") == inline
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m",
               "eval", *eval_args(tmp_path / "ranks", "--box-workers", "0", "--device", "cpu")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert outputs(tmp_path / "ranks") == inline
    assert not progress.progress_files(tmp_path / "ranks")  # merged and removed
    assert result.stdout.count("wrote ") == 1  # rank 0 alone reports


@pytest.mark.realdata
def test_resume_reads_the_progress_of_every_rank(tmp_path):
    assert main(eval_args(tmp_path / "whole", "--box-workers", "0")) == 0
    expected = outputs(tmp_path / "whole")
    settings = json.loads((tmp_path / "whole" / "metrics.json").read_text())["settings"]
    # a 2-rank run that stopped: rank 0 finished its first batch, rank 1 nothing; another layout's file is stale
    out = tmp_path / "cut"
    out.mkdir()
    images = sorted(json.loads(VAL_ANN.read_text())["images"], key=lambda im: im["id"])
    image_ids = {im["id"] for im in images}
    first = [im["id"] for im in images[:4]]
    stamps = [(os.stat(VAL_IMAGES / im["file_name"]).st_size, os.stat(VAL_IMAGES / im["file_name"]).st_mtime_ns)
              for im in images[:4]]
    dets = [d for d in expected[0] if d["image_id"] in first]
    progress.start(progress.progress_path(out, 0, 2), settings)
    with progress.progress_path(out, 0, 2).open("a") as log:
        progress.write_batch(log, first, stamps, [], Detections(dets), [np.zeros((0, 3, 100), bool)] * 4, [[]] * 4)
    progress.start(progress.progress_path(out, 1, 2), settings)
    done = progress.read_all(out, settings, image_ids)
    assert set(done.done) == set(first) and done.all_detections().to_dicts() == dets
    assert main(eval_args(out, "--box-workers", "0", "--resume")) == 0  # resumed by one process
    resumed = outputs(out)
    assert resumed[0] == expected[0]
    assert not progress.progress_files(out)


def batch_line(image_id: int, **changes) -> str:
    """A valid progress line of one image with no detections and one present class, changed by ``changes``."""
    empty = {key: "" for key in progress.COLUMNS}
    record = {"images": [image_id], "stamps": [[10, 20]], "unreadable": [], "detections": empty,
              "wsol": {"recognised": [[True]], "hits": [np.packbits(np.zeros(300, bool)).tobytes().hex()]}}
    return json.dumps({**record, **changes})


def test_a_damaged_progress_file_is_one_line(tmp_path):
    settings = {"a": "1"}
    path = progress.progress_path(tmp_path)
    cases = {"wsol.hits does not match": batch_line(5, wsol={"recognised": [[True]], "hits": ["00"]}),
             "not the record of images": batch_line(7),
             "stamps must give": batch_line(5, stamps=[]),
             "name images it did not finish": batch_line(5, detections=dict(
                 image_id=base64.b64encode(np.array([6], "<i8").tobytes()).decode(),
                 category_id=base64.b64encode(np.array([1], "<i8").tobytes()).decode(),
                 bbox=base64.b64encode(np.zeros(4, "<f8").tobytes()).decode(),
                 score=base64.b64encode(np.ones(1, "<f8").tobytes()).decode())),
             "detection scores include NaN": batch_line(5, detections=dict(
                 image_id=base64.b64encode(np.array([5], "<i8").tobytes()).decode(),
                 category_id=base64.b64encode(np.array([1], "<i8").tobytes()).decode(),
                 bbox=base64.b64encode(np.zeros(4, "<f8").tobytes()).decode(),
                 score=base64.b64encode(np.array([np.nan], "<f8").tobytes()).decode()))}
    for message, line in cases.items():
        progress.start(path, settings)
        with path.open("a") as log:
            log.write(batch_line(5) + "\n" + line + "\n" + batch_line(6) + "\n")
        with pytest.raises(progress.ProgressError, match=rf"line 3: .*{message}"):
            progress.read(path, settings, {5, 6})
    path.write_text(json.dumps({"settings": settings}) + "\n" + batch_line(6, images=[], stamps=[], unreadable=[
        [5, "truncated"]], wsol={"recognised": [], "hits": []}) + "\n" + batch_line(6)[:20])
    found = progress.read(path, settings, {5, 6})  # a torn last line is dropped
    assert found.unreadable == {5: "truncated"} and 5 in found and 6 not in found
    with pytest.raises(progress.ProgressError, match=r"other settings \(a differ\)"):
        progress.read(path, {"a": "2"}, {5, 6})


@pytest.mark.realdata
def test_resume_refuses_another_image_folder_or_a_changed_image(tmp_path):
    """The same file names with other photos must not be merged into the interrupted run."""
    images = sorted(json.loads(VAL_ANN.read_text())["images"], key=lambda im: im["id"])[:4]
    ids = {im["id"] for im in images}
    ann = dict(json.loads(VAL_ANN.read_text()), images=images)
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in ids]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    for im, other in zip(images, images[::-1]):  # same names, other photos
        (folders[0] / im["file_name"]).write_bytes((VAL_IMAGES / im["file_name"]).read_bytes())
        (folders[1] / im["file_name"]).write_bytes((VAL_IMAGES / other["file_name"]).read_bytes())

    def run(folder, *extra):
        return main(["--images", str(folder), "--ann", str(tmp_path / "ann.json"), "--checkpoint", str(COCO80),
                     "--out", str(tmp_path / "out"), "--workers", "0", "--batch-size", "2", "--box-workers", "0",
                     "--recipe", "seed", *extra])

    assert run(folders[0]) == 0
    settings = json.loads((tmp_path / "out" / "metrics.json").read_text())["settings"]
    assert len(settings["checkpoint_sha256"]) == 64 and settings["images_folder"] == str(folders[0].resolve())
    path = progress.progress_path(tmp_path / "out")
    stamps = [(os.stat(folders[0] / im["file_name"]).st_size, os.stat(folders[0] / im["file_name"]).st_mtime_ns)
              for im in images[:2]]

    def interrupted():  # the first batch finished, then the run stopped
        progress.start(path, settings)
        with path.open("a") as log:
            progress.write_batch(log, [im["id"] for im in images[:2]], stamps, [], Detections([]),
                                 [np.zeros((0, 3, 100), bool)] * 2, [[]] * 2)

    interrupted()
    assert run(folders[1], "--resume") == 2  # another folder: other settings
    interrupted()
    (folders[0] / images[0]["file_name"]).write_bytes((VAL_IMAGES / images[3]["file_name"]).read_bytes())
    assert run(folders[0], "--resume") == 2  # an image replaced since it was read
    interrupted()
    (folders[0] / images[0]["file_name"]).write_bytes((VAL_IMAGES / images[0]["file_name"]).read_bytes())
    os.utime(folders[0] / images[0]["file_name"], ns=(stamps[0][1], stamps[0][1]))
    assert run(folders[0], "--resume") == 0  # restored byte for byte, same mtime: resumes


@pytest.mark.realdata
@pytest.mark.parametrize("recipe", [["--recipe", "seed"], ["--box-scale", "4"]])
def test_the_pipeline_gives_the_localizers_own_detections(tmp_path, one_thread, recipe):
    """``python -m eval`` (batched reading, box stage and writing) = ``Localizer.detections`` image by image:
    the course recipe at full resolution, and the default recipe with its boxes on the feature grid (every
    detection: ``--max-dets 0``)."""
    assert main(eval_args(tmp_path / "run", "--box-workers", "0", "--limit", "8", "--max-dets", "0", *recipe)) == 0
    dets, _ = outputs(tmp_path / "run")
    options = {"recipe": "seed"} if recipe[0] == "--recipe" else {"box_scale": 4}
    localizer = Localizer.from_checkpoint(COCO80, device="cpu", **options)
    images = sorted(json.loads(VAL_ANN.read_text())["images"], key=lambda im: im["id"])[:8]
    expected = []
    for start in (0, 4):  # the same batches as the run, so the network sees the same inputs
        chunk = images[start:start + 4]
        for im, analysis in zip(chunk, localizer.analyze([VAL_IMAGES / im["file_name"] for im in chunk])):
            expected += localizer.detections(analysis, im["id"])
    assert dets == expected and len({d["image_id"] for d in dets}) == 8


@pytest.mark.realdata
def test_finishing_batches_in_a_second_thread_changes_nothing(tmp_path, one_thread, monkeypatch):
    """The GPU layout (a second thread writes batch i while the main thread runs batch i + 1), run on the CPU,
    with --profile: the same outputs, and a profile naming every stage and the bound."""
    args = ("--box-workers", "1", "--limit", "8", "--box-scale", "4")
    assert main(eval_args(tmp_path / "plain", *args)) == 0
    monkeypatch.setattr(eval_run, "finish_in_thread", lambda device: True)
    assert main(eval_args(tmp_path / "thread", *args, "--profile")) == 0
    threaded = outputs(tmp_path / "thread")
    profile = threaded[1].pop("profile")
    assert threaded == outputs(tmp_path / "plain")
    stages = {(row["lane"], row["stage"]) for row in profile["stages"]}
    assert {("main process", s) for s in ("wait for data", "preprocess", "forward", "maps", "box stage (device)",
                                          "NMS", "connected components")} <= stages
    assert "main: finishing thread" in profile["lanes"] and any(stage == "write progress" for _, stage in stages)
    assert ("box workers", "host box stage + wsol hits") in stages and ("loader workers", "read + decode") in stages
    assert profile["bound"]["lane"] in profile["lanes"] and profile["images"] == 8
    assert all(row["seconds"] >= 0 for row in profile["stages"])
