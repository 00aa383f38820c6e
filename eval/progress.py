"""``python -m eval``'s progress files: one JSON line per finished batch, so a run can be resumed.

A run alone writes ``OUT/.progress.jsonl``; rank ``r`` of a ``torchrun`` run of ``w`` processes
writes ``OUT/.progress.r-of-w.jsonl``. Each file starts with ``{"settings": ...}`` — everything the
results depend on, the checkpoint's content hash and the image folder's real path included; every
other line is one batch, written in one call::

    {"images": [id, ...], "stamps": [[size, mtime_ns], ...], "unreadable": [[id, reason], ...],
     "detections": {"image_id": B64, "category_id": B64, "bbox": B64, "score": B64},
     "wsol": {"recognised": [[bool, ...], ...], "hits": [HEX, ...]}}

``images`` are the batch's decoded images and ``stamps`` their files' size and modification time as
read; detection columns are little-endian int64/float64 arrays in base64 (exact, and no JSON number
per detection); ``hits`` packs each image's wsolevaluation hits ``(present classes, 3, 100)`` bit by
bit. A torn last line (the process was killed while writing it) is dropped; any other damage, other
settings, or an image file that changed since it was read is an error that names the file.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from camloc.evaluation import Detections, EvaluationError
from camloc.evaluation.wsol import CAM_THRESHOLDS, IOU_DELTAS
from camloc.io.atomic import atomic_output

HIT_SHAPE = (len(IOU_DELTAS), len(CAM_THRESHOLDS))
COLUMNS = {"image_id": ("image", "<i8"), "category_id": ("category", "<i8"), "bbox": ("bbox", "<f8"),
           "score": ("score", "<f8")}


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
    """What finished: per image its map hits and recognition flags and its file's stamp; unreadable
    images with their reasons; the detections of every finished batch."""

    hits: dict[int, tuple[np.ndarray, list[bool]]] = field(default_factory=dict)
    stamps: dict[int, tuple[int, int]] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)
    detections: list[Detections] = field(default_factory=list)

    def update(self, other: Progress) -> None:
        self.hits.update(other.hits)
        self.stamps.update(other.stamps)
        self.unreadable.update(other.unreadable)
        self.detections += other.detections

    @property
    def done(self) -> dict[int, tuple[np.ndarray, list[bool]]]:
        return self.hits

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.hits or image_id in self.unreadable

    def all_detections(self) -> Detections:
        return Detections.concatenate(self.detections)


def drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (one without its newline) off ``path`` before more lines are appended."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)


def _encode(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _decode(text: Any, dtype: str) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError("a detection column is not a base64 string")
    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=dtype)


def write_batch(handle: IO[str], images: Sequence[int], stamps: Sequence[tuple[int, int]],
                unreadable: Sequence[tuple[int, str]], detections: Detections, hits: Sequence[np.ndarray],
                recognised: Sequence[list[bool]]) -> None:
    """Append one batch (one ``write`` call)."""
    columns = {key: _encode(getattr(detections, attr), dtype) for key, (attr, dtype) in COLUMNS.items()}
    record = {"images": list(images), "stamps": [list(s) for s in stamps], "unreadable": [list(u) for u in unreadable],
              "detections": columns,
              "wsol": {"recognised": [list(r) for r in recognised],
                       "hits": [np.packbits(np.asarray(h, bool).reshape(-1)).tobytes().hex() for h in hits]}}
    handle.write(json.dumps(record) + "\n")


def read(path: Path, settings: dict[str, Any], image_ids: set[int]) -> Progress:
    """The batches of one progress file, checked line by line (see the module docstring)."""
    damaged, hint = f"--resume: the progress file {path} is damaged", "; delete it or run without --resume"
    try:
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError) as exc:
        raise ProgressError(f"{damaged} ({exc.__class__.__name__}){hint}") from None
    if not isinstance(header, dict) or "settings" not in header:
        raise ProgressError(f"{damaged} (no settings line){hint}")
    if header["settings"] != settings:
        changed = sorted(k for k in set(settings) | set(header["settings"])
                         if settings.get(k) != header["settings"].get(k))
        raise ProgressError(f"{path.parent} holds a run with other settings ({', '.join(changed)} differ); "
                            "use a new --out or run without --resume")
    progress = Progress()
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ProgressError(f"{damaged} (line {number} is not JSON){hint}") from None
        try:
            progress.update(_batch(record, image_ids))
        except (EvaluationError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProgressError(f"{damaged} (line {number}: {exc}){hint}") from None
    return progress


def _ids(values: Any, image_ids: set[int]) -> list[int]:
    if not isinstance(values, list) or any(type(v) is not int or v not in image_ids for v in values):
        raise ValueError("not the record of images of --ann")
    return values


def _batch(record: Any, image_ids: set[int]) -> Progress:
    """One batch line as progress; a ``ValueError`` (or ``EvaluationError``) if it is not one."""
    if not isinstance(record, dict):
        raise ValueError("not a batch record")
    images = _ids(record["images"], image_ids)
    unreadable = record["unreadable"]
    if not isinstance(unreadable, list) or not all(isinstance(u, list) and len(u) == 2 and isinstance(u[1], str)
                                                   for u in unreadable):
        raise ValueError("unreadable must list [image id, reason] pairs")
    _ids([u[0] for u in unreadable], image_ids)
    stamps = record["stamps"]
    if not isinstance(stamps, list) or len(stamps) != len(images) or not all(
            isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s) for s in stamps):
        raise ValueError("stamps must give [size, mtime] of each image")
    columns = record["detections"]
    found = Detections.from_arrays(*(_decode(columns[key], dtype) for key, (_, dtype) in COLUMNS.items()))
    if len(found) and not np.isin(found.image, images).all():
        raise ValueError("its detections name images it did not finish")
    wsol = record["wsol"]
    recognised, packed = wsol["recognised"], wsol["hits"]
    if not (isinstance(recognised, list) and isinstance(packed, list)
            and len(recognised) == len(packed) == len(images)):
        raise ValueError("wsol must give the hits and recognition flags of each image")
    progress = Progress(stamps={i: (s[0], s[1]) for i, s in zip(images, stamps)},
                        unreadable={i: reason for i, reason in unreadable}, detections=[found])
    for image_id, flags, text in zip(images, recognised, packed):
        if not isinstance(flags, list) or not all(isinstance(r, bool) for r in flags):
            raise ValueError("wsol.recognised must be lists of booleans")
        size = len(flags) * HIT_SHAPE[0] * HIT_SHAPE[1]
        bits = np.frombuffer(bytes.fromhex(text), np.uint8)
        if len(bits) != (size + 7) // 8:
            raise ValueError("wsol.hits does not match wsol.recognised")
        progress.hits[image_id] = (np.unpackbits(bits)[:size].astype(bool).reshape(len(flags), *HIT_SHAPE), flags)
    return progress


def read_all(out: Path, settings: dict[str, Any], image_ids: set[int]) -> Progress:
    """The batches of every progress file in ``out`` (a resumed run may change its world size)."""
    progress = Progress()
    for path in progress_files(out):
        progress.update(read(path, settings, image_ids))
    return progress


def check_stamps(progress: Progress, folder: Path, names: dict[int, str]) -> None:
    """A :class:`ProgressError` if a finished image's file is not the one that was read (size or mtime)."""
    for image_id, stamp in progress.stamps.items():
        path = folder / names[image_id]
        try:
            stat = os.stat(path)
            now = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            now = (-1, -1)
        if now != tuple(stamp):
            raise ProgressError(f"--resume: {path} changed since the interrupted run read it (size, modification "
                                "time); its results would mix two inputs: run without --resume")
