"""Device names as users type them (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked
against the hardware that is really there."""

from __future__ import annotations

import re

import torch


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``; ``auto`` is the first GPU if there is one, else the CPU.

    A malformed name, or a GPU this machine does not have, is a ``ValueError`` saying what exists.
    """
    text = name.strip().lower() if isinstance(name, str) else ""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match and text != "mps":
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if match and count and int(match.group(1) or 0) < count:
        return torch.device(text)
    have = f"{count} CUDA GPU{'s' if count != 1 else ''} (cuda:0 … cuda:{count - 1})" if count else "no CUDA GPU"
    raise ValueError(f"device {name!r} is not available: this machine has {have}; use auto, cpu"
                     f"{', cuda' if count else ''}")
