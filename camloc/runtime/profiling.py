"""Seconds per stage of a long run, and which stage bounds it (``python -m eval --profile``).

Library code marks its stages with :func:`stage` (``with stage("forward"): ...``); that costs nothing
unless a :class:`StageClock` is active (:meth:`StageClock.active`). A stage nested in another is
charged its own time and the outer stage the rest, so the seconds add up to the time spent. While one is, each stage
synchronises the device before and after, so asynchronous GPU work is charged to the stage that
launched it (the synchronisation removes some overlap: a profiled run is a little slower than a
plain one, and says so). Work that runs beside the main process — loader workers decoding, box
workers tracing — is added with :meth:`StageClock.add` under its lane; a lane's time divided by its
processes is how long it kept the run busy, and the largest lane bounds the run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from camloc.runtime.errors import in_stage

MAIN = "main process"
_ACTIVE: list[StageClock] = []  # the clock :func:`stage` charges (at most one)
_THREAD = threading.local()  # .lane: the lane the current thread's stages go to (default MAIN)


@dataclass
class StageClock:
    """Seconds per ``(lane, stage)``; ``lanes`` maps each lane to its number of processes."""

    device: torch.device
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    lanes: dict[str, int] = field(default_factory=lambda: {MAIN: 1})

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, name: str, seconds: float, lane: str = MAIN) -> None:
        self.seconds[(lane, name)] = self.seconds.get((lane, name), 0.0) + seconds

    @contextlib.contextmanager
    def active(self) -> Iterator[StageClock]:
        """Make this clock the one :func:`stage` charges, from every thread of the process."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)

    def report(self, images: int, wall: float) -> dict[str, Any]:
        """Rows ``{lane, stage, seconds, ms_per_image, share}`` (share of the lane's busy time), each lane's
        busy seconds per process, and the bounding lane and stage."""
        busy = {lane: sum(s for (ln, _), s in self.seconds.items() if ln == lane) / processes
                for lane, processes in self.lanes.items()}
        rows = [{"lane": lane, "stage": name, "seconds": round(s, 4),
                 "ms_per_image": round(1000 * s / max(images, 1) / self.lanes[lane], 4),
                 "share": round(s / self.lanes[lane] / busy[lane], 4) if busy[lane] else 0.0}
                for (lane, name), s in self.seconds.items()]
        bound_lane = max(busy, key=busy.get)
        stages = [r for r in rows if r["lane"] == bound_lane]
        bound_stage = max(stages, key=lambda r: r["seconds"])["stage"] if stages else None
        return {"images": images, "wall_seconds": round(wall, 4), "stages": rows,
                "lanes": {lane: {"processes": self.lanes[lane], "busy_seconds": round(b, 4)}
                          for lane, b in busy.items()},
                "bound": {"lane": bound_lane, "stage": bound_stage}}


def set_thread_lane(lane: str, clock: StageClock | None = None) -> None:
    """Charge this thread's stages to ``lane`` (a second thread of the main process is a lane of its own,
    registered on ``clock`` with one process)."""
    _THREAD.lane = lane
    if clock is not None:
        clock.lanes.setdefault(lane, 1)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the enclosed work to ``name`` on the active clock (nothing when none is active); an exception leaving
    it is marked with ``name`` (:func:`camloc.runtime.errors.in_stage`), with or without a clock."""
    with in_stage(name):
        if not _ACTIVE:
            yield
            return
        yield from _timed(name)


def _timed(name: str) -> Iterator[None]:
    clock = _ACTIVE[-1]
    clock.sync()
    stack = _THREAD.__dict__.setdefault("stack", [])
    stack.append(0.0)  # time spent in stages nested in this one
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.sync()
        elapsed = time.perf_counter() - start
        clock.add(name, elapsed - stack.pop(), getattr(_THREAD, "lane", MAIN))
        if stack:
            stack[-1] += elapsed


def format_report(report: dict[str, Any]) -> str:
    """The report as a table, with the lane that bounds the run."""
    lines = [f"{'lane':<22}{'stage':<28}{'seconds':>10}{'ms/image':>10}{'share':>8}"]
    for row in sorted(report["stages"], key=lambda r: (r["lane"] != MAIN, r["lane"], -r["seconds"])):
        lines.append(f"{row['lane']:<22}{row['stage']:<28}{row['seconds']:>10.3f}{row['ms_per_image']:>10.2f}"
                     f"{100 * row['share']:>7.1f}%")
    busy = ", ".join(f"{lane} {info['busy_seconds']:.2f} s" + (f" per process ×{info['processes']}"
                                                               if info["processes"] > 1 else "")
                     for lane, info in report["lanes"].items())
    bound = report["bound"]
    lines.append(f"busy: {busy}; wall {report['wall_seconds']:.2f} s for {report['images']} images")
    lines.append(f"bound by: {bound['lane']} ({bound['stage']})")
    return "\n".join(lines)
