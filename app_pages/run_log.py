"""A ``python -m train`` run folder, read for the Training runs page (no Streamlit here).

``OUT/log.jsonl`` holds one JSON object per epoch (``epoch``, ``train_loss``, ``images_per_s``,
``skipped_images``, ``lr``, and ``val_map`` / ``val_loc_ap50`` when validated); the run's
settings are the ``training`` entry of its checkpoints' metadata.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LOG_NAME = "log.jsonl"
CHECKPOINTS = ("last.pt", "best.pt")


class RunLogError(ValueError):
    """A run folder whose log cannot be read; the message says why in one line."""


@dataclass(frozen=True)
class Run:
    """A training run: its folder, its per-epoch records and its settings (empty when unknown)."""

    folder: Path
    epochs: list[dict[str, Any]]
    settings: dict[str, str] = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Epochs and values of ``key`` where the log has a finite number for it."""
        points = [(r["epoch"], float(r[key])) for r in self.epochs
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [e for e, _ in points], [v for _, v in points]

    def best(self) -> dict[str, Any] | None:
        """The record with the highest validation mAP (the epoch ``best.pt`` holds), if the run validated."""
        scored = [r for r in self.epochs if isinstance(r.get("val_map"), (int, float))]
        return max(scored, key=lambda r: r["val_map"], default=None)


def find_runs(root: Path) -> list[Path]:
    """Folders at or below ``root`` that hold a ``log.jsonl``, sorted."""
    return sorted(p.parent for p in root.rglob(LOG_NAME) if p.is_file()) if root.is_dir() else []


def read_run(folder: Path) -> Run:
    """Parse ``folder/log.jsonl`` (a :class:`RunLogError` for a missing, empty or malformed log)."""
    path = folder / LOG_NAME
    if not folder.is_dir():
        raise RunLogError(f"{folder} is not a folder; give the --out folder of `python -m train`.")
    if not path.is_file():
        raise RunLogError(f"{folder} has no {LOG_NAME}; it is written after each epoch of `python -m train`.")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunLogError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RunLogError(f"{path} line {number} is not JSON; is the file a training log?") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise RunLogError(f"{path} line {number} is not an epoch record (a JSON object with an integer epoch).")
        records.append(record)
    if not records:
        raise RunLogError(f"{path} is empty: the run has not finished an epoch yet.")
    return Run(folder, sorted(records, key=lambda r: r["epoch"]), read_settings(folder))


def read_settings(folder: Path) -> dict[str, str]:
    """The command-line settings stored in the run's checkpoint (tensors-only load, memory-mapped)."""
    for name in CHECKPOINTS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return {str(k): str(v) for k, v in payload["meta"]["training"].items()}
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, AttributeError,
                ValueError):
            continue
    return {}
