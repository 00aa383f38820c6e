"""Finishing a run's batches: join the box workers' results, write one progress line per batch, feed the outputs.

:class:`BatchWriter` runs in the main thread, or (on a GPU) in a second thread that the main thread feeds while it
launches the next batch. A batch is written whole or not at all; on a failure anywhere, what is in flight is
dropped (never written half, never written as an empty batch) and the failure itself reaches the user.
"""

from __future__ import annotations

import queue
import threading
from typing import IO

import numpy as np

from camloc.evaluation import Detections
from camloc.pipeline.boxstage import BoxPipeline, FinishedBatch
from camloc.runtime.errors import in_stage
from camloc.runtime.profiling import StageClock, set_thread_lane, stage
from camloc.runtime.workerpool import OrderedPool
from eval import progress
from eval.results import RunResults

BOX_LANE, FINISH_LANE = "box workers", "main: finishing thread"
#: The stage named when a box worker's job fails (the worker's own traceback stays in the worker).
WORKER_STAGE = "host box stage (box workers)"


class BatchWriter:
    """Finishes batches in order (joins worker results, keeps only unfinished images, writes one progress line per
    batch, adds it to ``results``) — in the calling thread, or in a second thread that the main thread feeds."""

    def __init__(self, pipeline: BoxPipeline, pool: OrderedPool, log: IO[str], finished: progress.Progress,
                 results: RunResults, clock: StageClock | None, threaded: bool):
        self.pipeline, self.pool, self.log, self.finished, self.clock = pipeline, pool, log, finished, clock
        self.results = results
        self.meta: dict[int, tuple] = {}
        self.queue: queue.Queue | None = queue.Queue(maxsize=2) if threaded else None
        self.thread = threading.Thread(target=self._serve, daemon=True) if threaded else None
        self.error: BaseException | None = None
        if self.thread:
            self.thread.start()

    def submit(self, index: int, job, meta: tuple) -> None:
        """Hand over part ``index``'s job (``None``: nothing readable) and ``(ids, stamps, unreadable)``."""
        self.meta[index] = meta
        if self.queue is None:
            self._take(index, job)
            return
        self._put((index, job))

    def _serve(self) -> None:
        if self.clock:
            set_thread_lane(FINISH_LANE, self.clock)
        while (item := self.queue.get()) is not None:
            try:
                self._take(*item)
            except BaseException as exc:  # re-raised by the main thread at its next submit or close
                self.error = exc
                return

    def _take(self, index: int, job) -> None:
        if job is None:
            self._write(index, FinishedBatch(Detections.from_arrays(*(np.zeros(0),) * 4), (), ()))
            return
        with in_stage(WORKER_STAGE):
            results = list(self.pool.submit(job))
        for result in results:
            self._write(result.index, self.pipeline.finish(result))

    def _write(self, index: int, batch: FinishedBatch) -> None:
        ids, stamps, unreadable = self.meta.pop(index)
        if self.clock:
            self.clock.add("host box stage + wsol hits", batch.worker_seconds, BOX_LANE)
        with stage("write progress"):
            keep = [i for i, image_id in enumerate(ids) if image_id not in self.finished]
            wanted = [ids[i] for i in keep]
            dets = batch.detections
            if len(keep) < len(ids):  # run only to keep its batch whole
                dets = dets.rows(np.isin(dets.image, wanted))
            hits = [(batch.hits[i], batch.recognised[i]) for i in keep]
            unreadable = [u for u in unreadable if u[0] not in self.finished]
            progress.write_batch(self.log, wanted, [stamps[i] for i in keep], unreadable, dets,
                                 [h for h, _ in hits], [r for _, r in hits])
            self.log.flush()
        with stage("metrics: match the batch"):
            self.results.add(wanted, dets, hits, unreadable)

    def close(self) -> None:
        """Finish what is in flight and stop the thread; re-raise its error."""
        self._stop()
        if self.error:
            raise self.error
        with in_stage(WORKER_STAGE):
            results = list(self.pool.drain())
        for result in results:
            self._write(result.index, self.pipeline.finish(result))

    def abandon(self) -> None:
        """After a failure elsewhere: stop the thread and drop what is in flight (nothing is written for it, and
        nothing raised here hides the failure)."""
        self._stop()
        self.meta.clear()

    def _put(self, item: tuple | None) -> None:
        """Queue ``item`` for the thread; its error instead, if it has stopped on one (it takes nothing more)."""
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if self.error and item is not None:
            raise self.error

    def _stop(self) -> None:
        if self.thread is not None:
            self._put(None)
            self.thread.join()
