"""Worker processes for the host-side work of a long run: jobs in, results out in submission order.

:class:`OrderedPool` runs a picklable function on submitted items, inline (``workers=0``) or in
``spawn``-ed processes with one thread each, and yields the results in submission order as soon as
they are ready, so a run's output never depends on the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch

from camloc.runtime.devices import usable_cores


def default_box_workers() -> int:
    """One worker per CPU core the process may use, less one for the main process (at least 1)."""
    return max(1, usable_cores() - 1)


def _quiet_worker() -> None:
    """Workers run one job at a time: one thread each, so N workers use N cores. Ctrl-C is the main
    process's to handle: it collects what the workers have in hand before it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)


class OrderedPool:
    """Runs ``function`` on submitted items, inline (``workers=0``) or in ``workers`` processes, and
    yields the results in submission order as soon as they are ready; at most ``max_pending`` items
    are in flight (the oldest is waited for beyond that)."""

    def __init__(self, function: Callable[[Any], Any], workers: int, max_pending: int | None = None):
        self.function = function
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self.max_pending = max_pending or 4 * max(workers, 1)
        self.executor = None if workers == 0 else concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker)

    def submit(self, item: Any) -> Iterator[Any]:
        """Queue ``item``; yields the results that are ready (in order)."""
        if self.executor is None:
            yield self.function(item)
            return
        self.pending.append(self.executor.submit(self.function, item))
        while self.pending and (self.pending[0].done() or len(self.pending) > self.max_pending):
            yield self.pending.popleft().result()

    def drain(self) -> Iterator[Any]:
        """Every result still in flight, in order."""
        while self.pending:
            yield self.pending.popleft().result()

    def close(self) -> None:
        """Stop the workers (cancelling what has not started)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
