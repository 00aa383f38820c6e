"""Fingerprints of input files, so that a resumed run can tell whether its inputs are the ones it started with:
a file's content (SHA-256), and a folder's listed files by size and modification time (reading every image of
a training set again would cost more than the check is worth; a replaced or edited file changes its stamp)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file; ``(-1, -1)`` when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def stamps_digest(folder: str | Path, names: Iterable[str]) -> str:
    """SHA-256 of ``folder``'s real path and each listed file's name, size and modification time."""
    folder = Path(folder)
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in names:
        size, mtime = file_stamp(folder / name)
        digest.update(f"\0{name}\0{size}\0{mtime}".encode())
    return digest.hexdigest()
