"""Device names as users type them (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked
against the hardware that is really there."""

from __future__ import annotations

import os
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


#: A batch that keeps a data-centre GPU busy (ResNet-50 at 448 px in bf16: the forward's rate per image levels off
#: from about 32; 64 leaves room for the box stage's memory within the budget).
GPU_BATCH = 64
#: Loader processes on a GPU machine: all cores but two (the main process and its finishing thread), at most 12
#: (JPEG decoding of a batch of 64 on the device needs few; more only add start-up time and memory).
MAX_GPU_LOADERS = 12


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_defaults(device: torch.device, batch: int | None, workers: int | None, cpu_batch: int, cpu_workers: int,
                    processes: int = 1) -> tuple[int, int]:
    """``(batch size, loader workers)``: the ones given, else sized to the device — on a GPU :data:`GPU_BATCH` and
    ``min(cores − 2, 12)`` loaders shared by the ``processes`` of the machine (at least 1), elsewhere
    ``cpu_batch`` and ``cpu_workers``."""
    if device.type == "cuda":
        loaders = max(1, min(usable_cores() - 2, MAX_GPU_LOADERS) // max(processes, 1))
        return batch or GPU_BATCH, loaders if workers is None else workers
    return batch or cpu_batch, cpu_workers if workers is None else workers
