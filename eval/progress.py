"""``python -m eval``'s progress files: one JSON line per finished image, so a run can be resumed.

A run alone writes ``OUT/.progress.jsonl``; rank ``r`` of a ``torchrun`` run of ``w`` processes
writes ``OUT/.progress.r-of-w.jsonl``. Each file starts with ``{"settings": ...}``; every other
line is ``{"image_id", "detections", "wsol": {"recognised": [...], "hits": HEX}}`` where ``hits``
packs the wsolevaluation hits ``(present classes, 3, 100)`` bit by bit (``numpy.packbits``), or
``{"image_id", "unreadable": REASON}`` for an image that could not be decoded. A torn last line
(the process was killed while writing it) is dropped; any other damage is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from camloc.boxstage import ImageResult
from camloc.evaluation import Detections, EvaluationError
from camloc.evaluation.wsol import CAM_THRESHOLDS, IOU_DELTAS
from camloc.io_utils import atomic_output

HIT_SHAPE = (len(IOU_DELTAS), len(CAM_THRESHOLDS))


class ProgressError(Exception):
    """A progress file that cannot be resumed; the message says which and what to do."""


def progress_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    return out / (".progress.jsonl" if world == 1 else f".progress.{rank}-of-{world}.jsonl")


def progress_files(out: Path) -> list[Path]:
    """Every progress file in ``out`` (of any earlier world size)."""
    return sorted(out.glob(".progress*.jsonl"))


def start(path: Path, settings: dict[str, Any]) -> None:
    """A new progress file holding only the settings line (atomically)."""
    with atomic_output(path) as handle:
        handle.write(json.dumps({"settings": settings}) + "\n")


@dataclass
class Progress:
    """Finished images (image id → result) and unreadable ones (image id → reason)."""

    done: dict[int, ImageResult] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)

    def update(self, other: Progress) -> None:
        self.done.update(other.done)
        self.unreadable.update(other.unreadable)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.done or image_id in self.unreadable


def drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (one without its newline) off ``path`` before more lines are appended."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)


def write_unreadable(handle: IO[str], image_id: int, reason: str) -> None:
    """Append an image that could not be decoded."""
    handle.write(json.dumps({"image_id": image_id, "unreadable": reason}) + "\n")


def write(handle: IO[str], result: ImageResult) -> None:
    """Append one finished image."""
    wsol = {"recognised": list(result.recognised), "hits": np.packbits(result.hits.reshape(-1)).tobytes().hex()}
    handle.write(json.dumps({"image_id": result.image_id, "detections": result.detections, "wsol": wsol}) + "\n")


def read(path: Path, settings: dict[str, Any], image_ids: set[int]) -> Progress:
    """The images of one progress file, checked line by line (see the module docstring)."""
    damaged, hint = f"--resume: the progress file {path} is damaged", "; delete it or run without --resume"
    try:
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError) as exc:
        raise ProgressError(f"{damaged} ({exc.__class__.__name__}){hint}") from None
    if not isinstance(header, dict) or "settings" not in header:
        raise ProgressError(f"{damaged} (no settings line){hint}")
    if header["settings"] != settings:
        raise ProgressError(f"{path.parent} holds a run with other settings; use a new --out or run without --resume")
    progress = Progress()
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ProgressError(f"{damaged} (line {number} is not JSON){hint}") from None
        try:
            if isinstance(record, dict) and isinstance(record.get("unreadable"), str):
                progress.unreadable[_image_id(record, image_ids)] = record["unreadable"]
            else:
                progress.done[_image_id(record, image_ids)] = _result(record, image_ids)
        except (EvaluationError, KeyError, TypeError, ValueError) as exc:
            raise ProgressError(f"{damaged} (line {number}: {exc}){hint}") from None
    return progress


def _image_id(record: Any, image_ids: set[int]) -> int:
    image_id = record.get("image_id") if isinstance(record, dict) else None
    if type(image_id) is not int or image_id not in image_ids:
        raise ValueError("not the record of an image of --ann")
    return image_id


def _result(record: Any, image_ids: set[int]) -> ImageResult:
    """One progress line as a result; a ``ValueError`` (or ``EvaluationError``) if it is not one."""
    image_id = _image_id(record, image_ids)
    if not isinstance(record.get("detections"), list):
        raise ValueError("not the record of an image of --ann")
    found = Detections(record["detections"])
    if (found.image != image_id).any():
        raise ValueError("it mixes images")
    wsol = record["wsol"]
    recognised = wsol["recognised"]
    if not isinstance(recognised, list) or not all(isinstance(r, bool) for r in recognised):
        raise ValueError("wsol.recognised must be a list of booleans")
    size = len(recognised) * HIT_SHAPE[0] * HIT_SHAPE[1]
    packed = np.frombuffer(bytes.fromhex(wsol["hits"]), np.uint8)
    if len(packed) != (size + 7) // 8:
        raise ValueError("wsol.hits does not match wsol.recognised")
    hits = np.unpackbits(packed)[:size].astype(bool).reshape(len(recognised), *HIT_SHAPE)
    return ImageResult(image_id, record["detections"], hits, recognised)


def read_all(out: Path, settings: dict[str, Any], image_ids: set[int]) -> Progress:
    """The images of every progress file in ``out`` (a resumed run may change its world size)."""
    progress = Progress()
    for path in progress_files(out):
        progress.update(read(path, settings, image_ids))
    return progress
