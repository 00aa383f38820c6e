"""One-line error reports for the command-line tools: never a traceback (``--debug`` shows one), always the error
itself — and, for a failure inside a long run, the stage it happened in.

A run's stages (:func:`camloc.runtime.profiling.stage`, :func:`in_stage`) mark an exception that leaves them with
the name of the innermost one, so ``error: unexpected RuntimeError: CUDA error … (stage: forward; …)`` says
where it came from, whatever cleanup ran after it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

_STAGE = "_camloc_stage"
_CHILD_TRACEBACK = "Original Traceback (most recent call last):"


def stage_of(exc: BaseException) -> str | None:
    """The stage an exception left first (the innermost one), if a run marked it."""
    return getattr(exc, _STAGE, None)


def mark_stage(exc: BaseException, name: str) -> None:
    """Remember ``name`` as the stage ``exc`` came from, unless an inner stage already did."""
    if stage_of(exc) is None:
        with contextlib.suppress(AttributeError):  # an exception type with __slots__ goes on unmarked
            setattr(exc, _STAGE, name)


@contextlib.contextmanager
def in_stage(name: str) -> Iterator[None]:
    """Mark any :class:`Exception` leaving the block with the stage ``name`` (and re-raise it unchanged)."""
    try:
        yield
    except Exception as exc:
        mark_stage(exc, name)
        raise


def say(text: str) -> None:
    """Write ``text`` and its newline to stderr in one write: Python's stderr writes through, so ``print`` would
    make two, and the lines of processes sharing it (torchrun's ranks) could run together on one line."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def _message(exc: BaseException) -> str:
    """The exception's message on one line; an error re-raised from a worker process (DataLoader's "Caught X in
    DataLoader worker process N. Original Traceback …") is reduced to the original error's own last line."""
    text = str(exc)
    if _CHILD_TRACEBACK in text:
        lines = [line.strip() for line in text.split(_CHILD_TRACEBACK, 1)[1].splitlines() if line.strip()]
        text = lines[-1] if lines else text
        kind = exc.__class__.__name__
        text = text[len(kind) + 2:] if text.startswith(f"{kind}: ") else text
    return " ".join(text.split()) or exc.__class__.__name__


def error_line(exc: BaseException, expected: tuple[type[BaseException], ...]) -> str:
    """``error: <message>`` for an ``expected`` error (the boundaries' errors, whose messages say what is wrong and
    what to do); any other exception is named and points to ``--debug``. Either way the stage it came from, when a
    run marked one, closes the line."""
    message = _message(exc)
    where = f"stage: {stage_of(exc)}" if stage_of(exc) else ""
    if isinstance(exc, expected):
        return f"error: {message}" + (f" ({where})" if where else "")
    where = f"{where}; " if where else ""
    return (f"error: unexpected {exc.__class__.__name__}: {message[:300]} ({where}rerun with --debug for the "
            "traceback)")


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, camloc's own warnings (a warning class defined in camloc: notes about the user's input,
    e.g. an annotation id that changes COCO AP) are shown as the command-line tools' one ``warning: <message>``
    line on stderr; other libraries' warnings are shown as Python shows them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if not category.__module__.startswith("camloc"):
                shown(message, category, filename, lineno, file, line)
                return
            say(f"warning: {' '.join(str(message).split())}")

        warnings.showwarning = show
        yield
