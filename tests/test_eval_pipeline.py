"""The evaluation pipeline: box workers and torchrun ranks give the same outputs as one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from camloc.boxstage import OrderedPool
from eval import progress
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
    # a 2-rank run that stopped: rank 0 finished its first image, rank 1 nothing; another layout's file is stale
    out = tmp_path / "cut"
    out.mkdir()
    image_ids = {im["id"] for im in json.loads(VAL_ANN.read_text())["images"]}
    ordered = sorted(image_ids)[:12]
    first = [d for d in expected[0] if d["image_id"] == ordered[0]]
    progress.start(progress.progress_path(out, 0, 2), settings)
    with progress.progress_path(out, 0, 2).open("a") as log:
        from camloc.boxstage import ImageResult

        hits = np.zeros((0, 3, 100), bool)
        progress.write(log, ImageResult(ordered[0], first, hits, []))
    progress.start(progress.progress_path(out, 1, 2), settings)
    done = progress.read_all(out, settings, image_ids)
    assert set(done.done) == {ordered[0]} and done.done[ordered[0]].detections == first
    assert main(eval_args(out, "--box-workers", "0", "--resume")) == 0  # resumed by one process
    resumed = outputs(out)
    assert resumed[0] == expected[0]
    assert not progress.progress_files(out)


def test_a_damaged_progress_file_is_one_line(tmp_path):
    settings = {"a": "1"}
    path = progress.progress_path(tmp_path)
    progress.start(path, settings)
    with path.open("a") as log:
        log.write('{"image_id": 5, "detections": [], "wsol": {"recognised": [true], "hits": "00"}}\n')
        log.write('{"image_id": 6, "detections": []}\n')
    with pytest.raises(progress.ProgressError, match=r"line 2: wsol.hits does not match"):
        progress.read(path, settings, {5, 6})
    path.write_text(json.dumps({"settings": settings}) + '\n{"image_id": 5, "unreadable": "truncated"}\n{"imag')
    found = progress.read(path, settings, {5})  # a torn last line is dropped
    assert found.unreadable == {5: "truncated"} and 5 in found
    with pytest.raises(progress.ProgressError, match="other settings"):
        progress.read(path, {"a": "2"}, {5})
