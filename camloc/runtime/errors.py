"""One-line error reports for the command-line tools: never a traceback (``--debug`` shows one)."""

from __future__ import annotations


def error_line(exc: BaseException, expected: tuple[type[BaseException], ...]) -> str:
    """``error: <message>`` for an ``expected`` error (the boundaries' errors, whose messages say
    what is wrong and what to do); any other exception is named and points to ``--debug``."""
    message = " ".join(str(exc).split()) or exc.__class__.__name__
    if isinstance(exc, expected):
        return f"error: {message}"
    return f"error: unexpected {exc.__class__.__name__}: {message[:300]} (rerun with --debug for the traceback)"
