"""The box stage of a long run, off the critical path: per-image jobs, run inline or by worker processes.

The forward pass yields, per image, the raw maps of the classes a recipe needs (a few KB: the
maps are at the network's grid, e.g. 14×14) and the class probabilities. A :class:`BoxStage`
turns one such :class:`ImageJob` into its detections (and, given the image's ground truth, the
wsolevaluation hits of its maps); it is a plain picklable object, so a :class:`OrderedPool` of
worker processes can run it while the main process runs the next forward pass. Results come
back in submission order whatever the number of workers, so a run's output does not depend on it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camloc.devicestage import DeviceMaps
from camloc.evaluation.wsol import image_hits, recognised_classes
from camloc.localize import Analysis, baseline_detections, boxes_to_detections, recipe_detections, selected_classes
from camloc.recipes import Recipe


@dataclass(frozen=True)
class ImageJob:
    """One image's share of the box stage: everything a worker needs, on the CPU."""

    image_id: int
    analysis: Analysis  # maps of the classes the recipe selects and of the classes present (ground truth)
    truth: tuple[tuple[int, np.ndarray], ...] = ()  # (class index, [x, y, w, h] boxes) of each class present
    packed: np.ndarray | None = None  # device path: the masks to trace (camloc.devicestage), else None


@dataclass(frozen=True)
class ImageResult:
    """One image's detections and, when its ground truth was given, the hits of its present classes' maps."""

    image_id: int
    detections: list[dict[str, Any]]
    hits: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 100), bool))  # (present classes, δ, τ)
    recognised: list[bool] = field(default_factory=list)
    traced: tuple[np.ndarray, np.ndarray] | None = None  # device path: (mask index, xywh), scored by the main process


@dataclass(frozen=True)
class BoxStage:
    """Detections of a recipe (or a map-free baseline) and the wsolevaluation hits, for one image."""

    recipe: Recipe
    category_ids: tuple[int, ...]
    supported: Tensor  # (K,) bool, on the CPU
    baseline: str | None = None

    def job(self, image_id: int, analysis: Analysis, truth: Sequence[tuple[int, np.ndarray]] = ()) -> ImageJob:
        """The job of an analysed image: only the maps it needs, moved to the CPU."""
        selected = self.recipe.select(analysis.probs[None].cpu(), self.supported)[0]
        needed = set(torch.nonzero(selected).flatten().tolist()) | {k for k, _ in truth}
        held = analysis.classes.tolist()
        rows = [i for i, k in enumerate(held) if k in needed]
        compact = Analysis(analysis.size, analysis.probs.cpu(), analysis.classes[rows].cpu(),
                           analysis.raw_maps[rows].cpu(), analysis.views)
        return ImageJob(image_id, compact, tuple((k, np.asarray(b)) for k, b in truth if k in held))

    def __call__(self, job: ImageJob) -> ImageResult:
        analysis, traced = job.analysis, None
        if job.packed is not None:
            dets, traced = [], self.recipe.trace(job.packed, analysis.size[1])
        elif self.baseline:
            dets = baseline_detections(analysis, self.baseline, self.recipe, self.supported, self.category_ids,
                                       job.image_id)
        else:
            dets = recipe_detections(analysis, self.recipe, self.supported, self.category_ids, job.image_id)
        if not job.truth:
            return ImageResult(job.image_id, dets, traced=traced)
        present = [k for k, _ in job.truth]
        hits = image_hits(analysis.raw_maps[analysis.rows(present)], [boxes for _, boxes in job.truth], analysis.size)
        return ImageResult(job.image_id, dets, hits, recognised_classes(analysis.probs, present), traced)


class BoxPipeline:
    """The main process's side of the box stage: it makes each image's job and finishes its result.

    Device path (maps on a GPU, a recipe with :attr:`~camloc.recipes.Recipe.on_device`, no baseline;
    ``device_path=True`` forces it on the CPU): the job's masks are computed and packed on the maps'
    device (:meth:`~camloc.recipes.Recipe.device_stage`), the summed-area tables wait here, a worker
    traces the masks, and :meth:`finish` scores the boxes from the tables. Otherwise the worker does
    everything from the raw maps and :meth:`finish` passes its result on.
    """

    def __init__(self, stage: BoxStage, device_path: bool | None = None):
        self.stage = stage
        self.device_path = device_path
        self.waiting: dict[int, tuple[DeviceMaps, list[int], Tensor]] = {}

    def uses_device(self, analysis: Analysis) -> bool:
        if self.stage.baseline or not self.stage.recipe.on_device:
            return False
        return analysis.raw_maps.device.type != "cpu" if self.device_path is None else self.device_path

    def job(self, image_id: int, analysis: Analysis, truth: Sequence[tuple[int, np.ndarray]] = ()) -> ImageJob:
        job = self.stage.job(image_id, analysis, truth)
        if not self.uses_device(analysis):
            return job
        held = set(analysis.classes.tolist())
        classes = [k for k in selected_classes(analysis, self.stage.recipe, self.stage.supported) if k in held]
        maps = self.stage.recipe.device_stage(analysis.raw_maps[analysis.rows(classes)], analysis.size)
        self.waiting[image_id] = (maps, classes, analysis.probs[classes].cpu())
        return ImageJob(image_id, job.analysis, job.truth, maps.packed)

    def finish(self, result: ImageResult) -> ImageResult:
        if result.traced is None:
            return result
        maps, classes, probs = self.waiting.pop(result.image_id)
        found = self.stage.recipe.finish(maps, *result.traced, probs)
        dets = boxes_to_detections(found, classes, self.stage.category_ids, result.image_id)
        return ImageResult(result.image_id, dets, result.hits, result.recognised)


def default_box_workers() -> int:
    """One worker per CPU core the process may use, less one for the main process (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


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
