"""Memory as a budget: how much a per-batch stage may hold at once, work cut into chunks that fit it, and a batch
that still runs out of device memory retried in halves.

* :func:`memory_budget` — bytes a stage may use on a device: on CUDA a share of what
  ``torch.cuda.mem_get_info()`` reports free (:data:`CUDA_SHARE`), on the CPU :data:`CPU_BUDGET`; either
  overridden by the user (``--max-memory``, ``Localizer(max_memory=...)``, :func:`parse_memory`).
* :func:`chunks` — consecutive slices of ``n`` items of ``bytes_per_item`` each that fit a budget.
* :class:`Halving` — runs a batch in parts no larger than its current size; out of device memory, it halves the
  size (and keeps it for what follows), says so in one line, and goes on; a single item that does not fit is a
  :class:`DeviceMemoryError` naming it and the stage.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from camloc.runtime.errors import say as say_on_stderr
from camloc.runtime.errors import stage_of

#: The working memory of a per-batch stage on the CPU, unless told otherwise.
CPU_BUDGET = 1 << 30
#: The share of a GPU's free memory a stage may take (the rest: the caching allocator's slack, other stages'
#: tensors that are alive meanwhile, fragmentation).
CUDA_SHARE = 0.5
#: ``--max-memory`` values: a number of bytes with an optional unit.
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
#: Less than this is no budget for a stage that holds a few full-resolution maps; more than this is a typo.
MIN_BUDGET, MAX_BUDGET = 16 << 20, 1 << 50

T = TypeVar("T")


class DeviceMemoryError(RuntimeError):
    """One item (an image) that does not fit in device memory even alone; the message says which, where, and what
    to do."""


def parse_memory(text: str | int) -> int:
    """``"4GiB"``, ``"512M"``, ``"2e9"`` or a number of bytes → bytes (at least :data:`MIN_BUDGET`); anything else is
    a ``ValueError`` that says what is accepted."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"memory must be a size such as 4GiB, 512MiB or 2e9 (bytes), got {text!r}")
    size = float(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_BUDGET <= size <= MAX_BUDGET:
        raise ValueError(f"memory must be from {MIN_BUDGET >> 20} MiB to {MAX_BUDGET >> 50} PiB, got {text!r}")
    return int(size)


def memory_budget(device: torch.device | str, limit: int | None = None) -> int:
    """Bytes a per-batch stage may hold at once on ``device``: ``limit`` if given, else :data:`CUDA_SHARE` of the
    GPU's free memory (at least :data:`MIN_BUDGET`), else :data:`CPU_BUDGET`."""
    if limit is not None:
        return int(limit)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(MIN_BUDGET, int(free * CUDA_SHARE))
    return CPU_BUDGET


def chunks(count: int, bytes_per_item: int, budget: int) -> Iterator[slice]:
    """Consecutive slices of ``range(count)``, each of as many items as ``budget`` holds at ``bytes_per_item``
    (at least one)."""
    step = max(1, int(budget // max(int(bytes_per_item), 1)))
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA's, or an allocator's ``RuntimeError`` saying so)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and not isinstance(exc, DeviceMemoryError) and "out of memory" in str(exc))


def _release(device: torch.device | None) -> None:
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


class Halving:
    """Runs a batch in consecutive parts of at most :attr:`size` items; a part that runs out of device memory is run
    again in halves, and :attr:`size` stays halved for the parts and batches that follow."""

    def __init__(self, size: int, device: torch.device | None = None, say: Callable[[str], None] | None = None):
        self.size = max(1, int(size))
        self.device = device
        self.say = say or say_on_stderr

    def run(self, items: Sequence[T], work: Callable[[Sequence[T]], Any], name: Callable[[T], str] = str
            ) -> list[Any]:
        """``[work(part) for part in parts of items]``; ``name`` says which item did not fit on its own."""
        results, start = [], 0
        while start < len(items):
            part = items[start:start + self.size]
            failure = None
            try:
                results.append(work(part))
                start += len(part)
                continue
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failure = (exc.__class__.__name__, stage_of(exc) or "unknown")
                if len(part) == 1:
                    raise DeviceMemoryError(
                        f"{name(part[0])} does not fit in device memory even alone (stage: {failure[1]}); lower "
                        "--img-size or --max-memory, or use a device with more memory") from exc
            _release(self.device)  # the failed part's tensors died with the exception above
            self.size = max(1, len(part) // 2)
            self.say(f"note: out of device memory with {len(part)} images at once (stage: {failure[1]}); "
                     f"going on with {self.size} at a time")
        return results
