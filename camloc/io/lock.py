"""One writer per output folder: an exclusive ``flock`` on ``FOLDER/.camloc.lock``, held for a whole run.

``python -m eval`` and ``python -m train`` append to progress files and replace ``last.pt`` as they go; two runs
writing to one ``--out`` would interleave them into results that belong to neither. So a run takes the folder's
lock before it reads or writes anything there and keeps it until it ends; a second run is refused at once
with one line naming the holder's process id. The kernel releases the lock when the holder exits, however it
ends (a kill included), so a stale lock never blocks a ``--resume``. The lock file itself stays (removing it
would let a third run lock a new file while the second still holds the old one); it holds the holder's pid.

Under ``torchrun`` only rank 0 takes the lock (it is the only writer of the shared outputs) and every rank
learns its outcome, so all ranks stop together instead of waiting for each other at a barrier. The holder
removes what writers killed in this folder left (:func:`camloc.io.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from camloc.io.atomic import OutputError, remove_stale_temporaries

#: The lock file's name in the output folder.
LOCK_NAME = ".camloc.lock"
#: How long a refused run waits for the holder's pid to appear in the file (it is written just after locking).
PID_WAIT_S = 0.5


class FolderBusyError(OutputError):
    """Another process holds the output folder's lock; the message names it and what to do."""


def _holder(path: Path) -> str:
    """The pid written in the lock file by its holder (``unknown`` if it has not written it yet)."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if text.isdigit():
                return text
        if time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.02)


def lock_folder(folder: str | Path) -> int:
    """Take ``folder``'s lock for this process: the open descriptor that holds it (close it to release), or a
    :class:`FolderBusyError` naming the process that holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create the lock file {path} ({exc.strerror or exc.__class__.__name__}); "
                          "choose a writable output folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(f"another run is writing to {folder} (pid {_holder(path)}); wait for it to end, or "
                              "choose another output folder") from None
    except OSError as exc:
        os.close(fd)
        raise OutputError(f"cannot lock {path} ({exc.strerror or exc.__class__.__name__}); use an output folder "
                          "on a local file system") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, take: bool = True,
                     agree: Callable[[str | None], str | None] = lambda problem: problem) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block (see the module docstring).

    ``take``: whether this process takes the lock (under torchrun: rank 0 only); ``agree``: called by every
    process with its outcome (``None``, or the refusal's message) and returning the taking process's outcome,
    so that every process raises the same :class:`FolderBusyError` or :class:`OutputError` (default: alone,
    its own outcome)."""
    fd, problem = None, None
    if take:
        try:
            fd = lock_folder(folder)
            remove_stale_temporaries(folder)
        except OutputError as exc:
            problem = f"{'busy' if isinstance(exc, FolderBusyError) else 'output'}:{exc}"
    try:
        problem = agree(problem)
        if problem is not None:
            kind, _, message = problem.partition(":")
            raise (FolderBusyError if kind == "busy" else OutputError)(message)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
