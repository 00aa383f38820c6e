"""Runs that cannot be corrupted: one writer per output folder (real concurrent processes), kills at real points
and ``--resume``, a finished folder resumed.

A *held* run is a real ``python -m eval`` / ``python -m train`` process whose network step waits for a gate file
before its ``HOLD_AT``-th batch (or epoch): the test knows the run is in the middle of its work while another
process tries the same ``--out``, and can kill it there.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camloc.demo import DEMO_CHECKPOINT
from camloc.io.lock import LOCK_NAME
from camloc.runtime.errors import say
from camloc.synthetic import generate_split
from eval.cli import main as eval_main
from tests.conftest import ROOT
from tests.fuzz_support import scene_data, torch_threads

HELD = """
import os, sys, time
from pathlib import Path

gate, hold_at, calls = Path(os.environ["CAMLOC_GATE"]), int(os.environ["CAMLOC_HOLD_AT"]), []

def wait():
    calls.append(1)
    if len(calls) == hold_at:
        Path(os.environ["CAMLOC_GATE"] + ".reached").touch()
        deadline = time.monotonic() + 300
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

if sys.argv[1] == "eval":
    from camloc.pipeline import Localizer
    step = Localizer.analyze_batch
    def held(self, *args, **kwargs):
        wait()
        return step(self, *args, **kwargs)
    Localizer.analyze_batch = held
    from eval.cli import main
else:
    import train.cli
    step = train.cli.train_epoch
    def held(*args, **kwargs):
        wait()
        return step(*args, **kwargs)
    train.cli.train_epoch = held
    main = train.cli.main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Six 64-px synthetic scenes with the demo checkpoint's six categories."""
    return scene_data(tmp_path_factory.mktemp("data"), 6, seed=1)


def eval_argv(data: dict, out: Path, *extra: str) -> list[str]:
    return ["--images", str(data["images"]), "--ann", str(data["ann_path"]), "--checkpoint", str(DEMO_CHECKPOINT),
            "--out", str(out), "--workers", "0", "--img-size", "64", "--box-workers", "0", "--batch-size", "2",
            "--recipe", "seed", *extra]


def train_argv(data: dict, out: Path, *extra: str) -> list[str]:
    return ["--images", str(data["images"]), "--ann", str(data["ann_path"]), "--out", str(out), "--arch",
            "mobilenet_v2", "--weights", "none", "--img-size", "32", "--batch-size", "2", "--epochs", "2",
            "--workers", "0", "--no-calibrate", *extra]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> list:
    """``detections.json`` of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert eval_main(eval_argv(data, out)) == 0
    return json.loads((out / "detections.json").read_text())


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


class Held:
    """A real run held before its ``hold_at``-th step until :meth:`release` (or killed there)."""

    def __init__(self, tool: str, argv: list[str], gate: Path, hold_at: int = 1):
        self.gate = gate
        env = dict(environment(), CAMLOC_GATE=str(gate), CAMLOC_HOLD_AT=str(hold_at))
        self.process = subprocess.Popen([sys.executable, "-c", HELD, tool, *argv], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_until_held(self, timeout: float = 300) -> None:
        reached = Path(f"{self.gate}.reached")
        deadline = time.monotonic() + timeout
        while not reached.exists():
            assert self.process.poll() is None, self.process.communicate()
            assert time.monotonic() < deadline, "the held run never reached its hold point"
            time.sleep(0.05)

    def release(self) -> tuple[int, str]:
        self.gate.touch()
        _, err = self.process.communicate(timeout=300)
        return self.process.returncode, err

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=60)


def cli(tool: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", tool, *argv], cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=300)


def one_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_a_second_eval_on_the_same_out_is_refused_and_the_first_is_untouched(data, reference, tmp_path):
    """Two real processes: while one run is in the middle of its work, a fresh run and a ``--resume`` on the same
    ``--out`` are each refused with one line naming its pid; the first then finishes with the uninterrupted
    run's detections (without the lock, the fresh run replaced its progress file and ended it with 'images have
    no result')."""
    out = tmp_path / "out"
    first = Held("eval", eval_argv(data, out), tmp_path / "gate", hold_at=2)
    try:
        first.wait_until_held()
        for extra in ([], ["--resume"]):
            error = one_error(cli("eval", *eval_argv(data, out, *extra)))
            assert f"another run is writing to {out} (pid {first.process.pid})" in error
        assert (out / LOCK_NAME).read_text().strip() == str(first.process.pid)
        code, err = first.release()
    finally:
        first.process.kill()
    assert code == 0, err[-2000:]
    assert json.loads((out / "detections.json").read_text()) == reference


def test_a_killed_run_holds_no_lock_and_resumes_to_the_same_detections(data, reference, tmp_path):
    """SIGKILL after the first batch (a real kill point): the kernel drops the lock with the process, and
    ``--resume`` computes only the rest, ending with the uninterrupted run's detections."""
    out = tmp_path / "out"
    first = Held("eval", eval_argv(data, out), tmp_path / "gate", hold_at=2)
    first.wait_until_held()
    first.kill()
    lines = (out / ".progress.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the settings and the first batch
    assert eval_main(eval_argv(data, out, "--resume")) == 0
    assert json.loads((out / "detections.json").read_text()) == reference
    stamps = json.loads((out / "metrics.json").read_text())["image_stamps"]
    assert [row[0] for row in stamps] == sorted(im["id"] for im in data["ann"]["images"])  # resumed + new ones
    assert eval_main(eval_argv(data, out, "--resume")) == 0  # already complete


def test_a_second_training_on_the_same_out_is_refused(data, tmp_path):
    out = tmp_path / "run"
    first = Held("train", train_argv(data, out), tmp_path / "gate", hold_at=2)
    try:
        first.wait_until_held()
        assert (out / "last.pt").is_file()  # the first epoch is written
        before = (out / "last.pt").read_bytes()
        for extra in ([], ["--resume"]):
            error = one_error(cli("train", *train_argv(data, out, *extra)))
            assert f"another run is writing to {out} (pid {first.process.pid})" in error
        assert (out / "last.pt").read_bytes() == before
        code, err = first.release()
    finally:
        first.process.kill()
    assert code == 0, err[-2000:]
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


class Writes(io.RawIOBase):
    """A raw stream that keeps each write it gets (each one a system call on a real file)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.calls.append(bytes(data))
        return len(data)


def test_a_line_on_stderr_is_one_write(monkeypatch):
    """The ranks of a torchrun run share stderr, and Python's stderr writes through: ``print`` wrote a refusal
    and its newline in two writes, and two ranks' refusals came out on one line (seen in a full test run)."""
    assert subprocess.run([sys.executable, "-c", "import sys; print(sys.stderr.write_through)"],
                          capture_output=True, text=True, check=True).stdout.strip() == "True"
    raw = Writes()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", write_through=True))
    print("error: printed", file=sys.stderr)
    say("error: said")
    assert raw.calls == [b"error: printed", b"\n", b"error: said\n"]


@pytest.mark.slow
def test_torchrun_ranks_all_stop_when_the_folder_is_busy(data, tmp_path):
    """Under torchrun only rank 0 takes the lock; every rank learns that it was refused and stops (none waits
    at a barrier for a rank that left)."""
    out = tmp_path / "out"
    first = Held("eval", eval_argv(data, out), tmp_path / "gate")
    try:
        first.wait_until_held()
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m",
                   "eval", *eval_argv(data, out)]
        result = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        refusals = [line for line in result.stderr.splitlines() if "another run is writing to" in line]
        assert len(refusals) == 2, result.stderr[-3000:]
        code, err = first.release()
    finally:
        first.process.kill()
    assert code == 0, err[-2000:]


def test_resume_of_a_finished_run_does_nothing_or_is_refused_like_an_unfinished_one(data, tmp_path, monkeypatch,
                                                                                    capsys):
    """``--resume`` on a finished folder: the same settings and files say 'already complete' and compute nothing;
    another --images folder with the same file names, a replaced photo or another --limit is refused, and the
    finished results stay as they were (they used to be recomputed and replaced without a word)."""
    from camloc.localize import Localizer

    images = tmp_path / "images"
    images.mkdir()
    for im in data["ann"]["images"]:
        (images / im["file_name"]).write_bytes((data["images"] / im["file_name"]).read_bytes())
    out = tmp_path / "out"
    argv = eval_argv(data, out)
    argv[argv.index("--images") + 1] = str(images)
    assert eval_main(argv) == 0
    capsys.readouterr()
    finished = {name: (out / name).read_bytes() for name in ("detections.json", "metrics.json")}
    calls = []
    original = Localizer.analyze_batch
    monkeypatch.setattr(Localizer, "analyze_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert eval_main([*argv, "--resume"]) == 0
    assert calls == [] and "already complete" in capsys.readouterr().out

    other = tmp_path / "other"  # the same file names, other photos
    generate_split(other, "val", 6, 6, 64, seed=2)
    elsewhere = [*argv, "--resume"]
    elsewhere[elsewhere.index("--images") + 1] = str(other / "val")
    replaced = images / data["ann"]["images"][3]["file_name"]
    cases = {"images_folder differ": elsewhere, "limit differ": [*argv, "--resume", "--limit", "4"],
             f"{replaced} changed since the finished run": [*argv, "--resume"]}
    for expected, command in cases.items():
        if "changed" in expected:
            replaced.write_bytes((other / "val" / replaced.name).read_bytes())
        assert eval_main(command) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0], errors
    assert calls == []
    assert {name: (out / name).read_bytes() for name in finished} == finished


def killed_after_one_epoch(data: dict, out: Path, monkeypatch, *extra: str) -> Path:
    """A training of two epochs interrupted in its second: ``last.pt`` holds epoch 1."""
    import train.cli

    original = train.cli.train_epoch

    def interrupt(*args):
        if args[-1] == 1:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(train.cli, "train_epoch", interrupt)
    assert train.cli.main(train_argv(data, out, *extra)) == 130
    monkeypatch.setattr(train.cli, "train_epoch", original)
    return out / "last.pt"


def test_train_resume_refuses_every_changed_setting_in_one_line(data, tmp_path, monkeypatch, capsys):
    """Each of these used to continue the run silently (a changed --lr ignored while the metadata recorded it;
    --limit, --img-size, --mode crops and --seed changing the run mid-way)."""
    import torch

    from train.cli import main as train_main

    last = killed_after_one_epoch(data, tmp_path / "run", monkeypatch)
    before = last.read_bytes()
    changed_ann = tmp_path / "ann.json"
    ann = json.loads(json.dumps(data["ann"]))
    ann["annotations"][0]["bbox"][2] += 1
    changed_ann.write_text(json.dumps(ann))
    cases = {"--lr 0.001 → 0.01": ["--lr", "0.01"], "--limit None → 4": ["--limit", "4"],
             "--img-size 32 → 64": ["--img-size", "64"], "--mode multilabel → crops": ["--mode", "crops"],
             "--seed 0 → 1": ["--seed", "1"], "--batch-size 2 → 3": ["--batch-size", "3"],
             "--workers 0 → 1": ["--workers", "1"], "--epochs 2 → 3": ["--epochs", "3"],
             "--warmup-epochs 1.0 → 0.5": ["--warmup-epochs", "0.5"], "--ann (content)": ["--ann", str(changed_ann)],
             "trained the whole network, so training the head only from it is a new run": ["--freeze-backbone"],
             "--optimizer adamw → sgd": ["--optimizer", "sgd"]}
    for expected, extra in cases.items():
        argv = train_argv(data, last.parent, "--resume", *extra)
        if "--ann" in extra:
            argv[argv.index("--ann") + 1] = str(changed_ann)
            argv = argv[:-2]
        assert train_main(argv) == 2, expected
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0] and "damaged" not in errors[0], (expected, errors)
    replaced = data["images"] / data["ann"]["images"][0]["file_name"]
    os.utime(replaced, ns=(replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns + 10**9))
    assert train_main(train_argv(data, last.parent, "--resume")) == 2
    assert "--images (files)" in capsys.readouterr().err
    assert train_main(train_argv(data, last.parent, "--resume-anyway", "--freeze-backbone")) == 2  # never
    assert "is a new run" in capsys.readouterr().err
    assert last.read_bytes() == before

    # meant: the run continues with the new settings, which take effect (the new lr, the new schedule)
    assert train_main(train_argv(data, last.parent, "--resume-anyway", "--lr", "0.01", "--epochs", "3")) == 0
    state = torch.load(last, weights_only=True)["train_state"]
    assert sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]}) == pytest.approx([0.001, 0.01])
    from train.loop import warmup_cosine
    log = [json.loads(line) for line in (last.parent / "log.jsonl").read_text().splitlines()]
    steps = 3  # 6 images, 2 a batch
    expected = state["optimizer"]["param_groups"][-1]["initial_lr"] * warmup_cosine(3 * steps, steps)(2 * steps)
    assert [r["epoch"] for r in log] == [1, 2, 3] and log[1]["lr"] == pytest.approx(expected)
    assert state["fingerprint"]["lr"] == "0.01"


def test_train_resume_of_a_frozen_run_without_freezing_says_it_is_a_new_run(data, tmp_path, monkeypatch, capsys):
    """It used to say 'damaged training state' of a good checkpoint."""
    from train.cli import main as train_main

    last = killed_after_one_epoch(data, tmp_path / "run", monkeypatch, "--freeze-backbone")
    assert train_main(train_argv(data, last.parent, "--resume")) == 2
    error = capsys.readouterr().err
    assert "trained the head only (--freeze-backbone), so fine-tuning the whole network from it is a new run" in error
    assert f"--weights {last}" in error and "damaged" not in error
    assert train_main(train_argv(data, last.parent, "--resume", "--freeze-backbone")) == 0


KILLED_WRITER = """
import os, signal, sys
from camloc.io.atomic import atomic_output
with atomic_output(sys.argv[1]) as handle:
    handle.write("half")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporary_files_of_killed_writers_are_removed_at_the_next_start(data, tmp_path):
    """A process killed inside an atomic write leaves its temporary file; the next run that takes the folder
    removes it (and leaves a running writer's alone). They used to stay forever."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("metrics.json", "last.pt"):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out / name)], cwd=ROOT, env=environment())
        assert killed.returncode == -signal.SIGKILL
    stale = sorted(out.glob(".*.tmp"))
    assert len(stale) == 2 and all("camloc-tmp-" in p.name for p in stale)
    running = out / f".detections.json.camloc-tmp-{os.getpid()}-abcdefgh.tmp"
    running.write_text("being written")
    assert eval_main(eval_argv(data, out)) == 0
    assert sorted(out.glob(".*.tmp")) == [running]
