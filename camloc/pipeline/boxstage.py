"""The box stage of a long run, a whole batch at a time: device work in the main process, host work in workers.

After the forward pass a batch is a :class:`~camloc.pipeline.analysis.BatchAnalysis` on the model's device.
:class:`BoxPipeline` (main process) turns it into boxes the fastest way the recipe allows:

* *on the device, whole batch* — a recipe with ``box_scale`` (the evidence recipes on the feature
  grid, :mod:`camloc.boxes.grid`) or a map-free baseline: boxes of every (image, class) at once,
  nothing left for a worker but the wsolevaluation hits;
* *device masks, traced on the host* — maps on a GPU and a full-resolution recipe with a device
  stage (``seed``: OpenCV's contours, bit for bit): masks computed and bit-packed on the device
  (:mod:`camloc.boxes.device`), traced by a worker, scored back in the main process;
* *on the host* — maps on the CPU (or ``instances``): a worker runs the recipe on the CPU maps.

A :class:`BatchJob` carries a batch's host-side share (a few KB of grid-sized maps, packed masks,
the ground truth of the classes present); :class:`BoxStage` — picklable, run by
:class:`~camloc.runtime.workerpool.OrderedPool` workers while the main process runs the next batch —
returns a :class:`BatchResult`; :meth:`BoxPipeline.finish` joins it with what waited in the main
process into the batch's :class:`~camloc.evaluation.Detections` (flat arrays) and map hits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from camloc.boxes import BatchBoxes, Recipe, ScoredBoxes
from camloc.evaluation import Detections
from camloc.evaluation.wsol import CAM_THRESHOLDS, IOU_DELTAS, image_hits, recognised_classes
from camloc.pipeline.analysis import BatchAnalysis
from camloc.pipeline.detections import batch_detections
from camloc.runtime.profiling import stage

#: Per image: ``(class index, its ground-truth [x, y, w, h] boxes)`` of each class present.
Truth = tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class BatchJob:
    """One batch's host-side share of the box stage, on the CPU."""

    index: int
    sizes: tuple[tuple[int, int], ...]
    probs: Tensor  # (B, K)
    truth: tuple[Truth, ...]  # per image, the classes present whose maps are held
    truth_maps: tuple[Tensor, ...]  # per image, (present, h, w) raw maps in ``truth``'s order
    classes: Tensor | None = None  # (k,) host path: the class indices of ``maps``
    maps: Tensor | None = None  # (B, k, h, w) host path: raw maps of the gated classes
    gate: Tensor | None = None  # (B, K) host path: the classes to box
    packed: tuple[np.ndarray, ...] | None = None  # traced path: each image's packed masks


@dataclass(frozen=True)
class BatchResult:
    """A worker's answer: boxes (host path) or traced masks (traced path), and each image's map hits."""

    index: int
    boxes: BatchBoxes | None = None
    traced: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
    hits: tuple[np.ndarray, ...] = ()  # per image (present, len(IOU_DELTAS), len(CAM_THRESHOLDS)) bool
    recognised: tuple[list[bool], ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True)
class FinishedBatch:
    """A batch's detections (flat arrays, image ids and category ids) and its images' map hits."""

    detections: Detections
    hits: tuple[np.ndarray, ...]
    recognised: tuple[list[bool], ...]
    worker_seconds: float = 0.0


def no_hits() -> np.ndarray:
    return np.zeros((0, len(IOU_DELTAS), len(CAM_THRESHOLDS)), bool)


@dataclass(frozen=True)
class BoxStage:
    """The host-side work of a :class:`BatchJob` (what a worker process runs)."""

    recipe: Recipe

    def __call__(self, job: BatchJob) -> BatchResult:
        start = time.perf_counter()
        boxes = traced = None
        if job.maps is not None:
            boxes = self.recipe.batch_boxes(job.maps, job.probs, job.classes, job.gate, job.sizes)
        if job.packed is not None:
            traced = tuple(self.recipe.trace(packed, size[1]) for packed, size in zip(job.packed, job.sizes))
        hits, recognised = [], []
        for b, (truth, maps) in enumerate(zip(job.truth, job.truth_maps)):
            present = [k for k, _ in truth]
            hits.append(image_hits(maps, [boxes for _, boxes in truth], job.sizes[b]) if present else no_hits())
            recognised.append(recognised_classes(job.probs[b], present))
        return BatchResult(job.index, boxes, traced, tuple(hits), tuple(recognised), time.perf_counter() - start)


@dataclass
class BoxPipeline:
    """The main process's side of the box stage (see the module docstring).

    ``baseline``: ``"full"`` or ``"center"`` boxes instead of the maps' (scored by the class probability);
    ``device_path``: force (True) or forbid (False) the traced path (default: when the maps are on a GPU);
    ``max_dets``: the detections kept per image, the best scored (0: all); ``memory``: the bytes the device's share
    of the box stage may hold at once (default: :func:`~camloc.runtime.memory.memory_budget`).
    """

    recipe: Recipe
    category_ids: Sequence[int]
    supported: Tensor  # (K,) bool
    baseline: str | None = None
    device_path: bool | None = None
    max_dets: int = 0
    memory: int | None = None
    waiting: dict[int, tuple] = field(default_factory=dict)

    def path(self, batch: BatchAnalysis) -> str:
        """``"device"``, ``"traced"`` or ``"host"`` for this batch."""
        if self.baseline or getattr(self.recipe, "box_scale", None) is not None:
            return "device"
        on_gpu = batch.raw_maps.device.type != "cpu" if self.device_path is None else self.device_path
        return "traced" if on_gpu and self.recipe.on_device else "host"

    def job(self, index: int, image_ids: Sequence[int], batch: BatchAnalysis, truth: Sequence[Truth]) -> BatchJob:
        """Start a batch: device work now, the host's share as a job (its result goes to :meth:`finish`)."""
        probs = batch.probs
        gate = batch.gate(self.recipe, self.supported)
        held = {k: i for i, k in enumerate(batch.classes.tolist())}
        holds = [held] * len(batch) if batch.held is None else [
            {k: held[k] for k in batch.classes[own].tolist()} for own in batch.held.cpu()]
        truth = tuple(tuple((k, boxes) for k, boxes in image if k in holds[b]) for b, image in enumerate(truth))
        with stage("wsol maps to host"):  # one gather and one copy for the whole batch
            pairs = [(b, held[k]) for b, image in enumerate(truth) for k, _ in image]
            images, rows = (torch.tensor(c, dtype=torch.long, device=batch.raw_maps.device) for c in
                            (zip(*pairs) if pairs else ([], [])))
            truth_maps = tuple(batch.raw_maps[images, rows].cpu().split([len(image) for image in truth]))
        probs_cpu = probs.cpu()
        path = self.path(batch)
        common = {"index": index, "sizes": batch.sizes, "probs": probs_cpu, "truth": truth, "truth_maps": truth_maps}
        if path == "device":
            with stage("box stage (device)"):
                boxes = self.baseline_boxes(batch, gate) if self.baseline else \
                    self.recipe.batch_boxes(batch.raw_maps, probs, batch.classes, gate, batch.sizes, self.memory)
            self.waiting[index] = (image_ids, boxes)
            return BatchJob(**common)
        if path == "traced":
            with stage("box stage (device)"):
                gated = gate.cpu()
                classes = [[k for k in torch.nonzero(gated[b]).flatten().tolist() if k in held]
                           for b in range(len(batch))]
                maps = self.recipe.device_stage_batch(
                    [batch.raw_maps[b, [held[k] for k in chosen]] for b, chosen in enumerate(classes)], batch.sizes,
                    self.memory)
            self.waiting[index] = (image_ids, [(chosen, image_maps, probs_cpu[b, chosen])
                                               for b, (chosen, image_maps) in enumerate(zip(classes, maps))])
            return BatchJob(**common, packed=tuple(m.packed for m in maps))
        with stage("maps to host"):
            rows = torch.nonzero(gate[:, batch.classes].any(0)).flatten()
            maps = batch.raw_maps[:, rows].cpu()
        self.waiting[index] = (image_ids, None)
        return BatchJob(**common, classes=batch.classes[rows].cpu(), maps=maps, gate=gate.cpu())

    def baseline_boxes(self, batch: BatchAnalysis, gate: Tensor) -> BatchBoxes:
        """One box per gated class: the whole image (``full``) or its central half (``center``), score = p."""
        image, klass = (t.cpu().numpy() for t in torch.nonzero(gate, as_tuple=True))
        height, width = np.asarray(batch.sizes, dtype=np.float64).reshape(-1, 2)[image].T
        if self.baseline == "full":
            xywh = np.stack([np.zeros_like(width), np.zeros_like(width), width, height], 1)
        else:
            xywh = np.stack([width / 4, height / 4, width / 2, height / 2], 1)
        score = batch.probs.double().cpu().numpy()[image, klass]
        return BatchBoxes(image.astype(np.int64), klass.astype(np.int64), xywh, score)

    def finish(self, result: BatchResult) -> FinishedBatch:
        """The batch's detections, from its result and what waited here."""
        image_ids, waited = self.waiting.pop(result.index)
        if result.boxes is not None:
            boxes = result.boxes
        elif result.traced is not None:
            parts = []
            for b, ((classes, maps, probs), traced) in enumerate(zip(waited, result.traced)):
                found: ScoredBoxes = self.recipe.finish(maps, *traced, probs)
                parts.append(BatchBoxes(np.full(len(found), b, np.int64),
                                        np.asarray(classes, np.int64)[found.class_index], found.xywh, found.score))
            boxes = BatchBoxes.concatenate(parts)
        else:
            boxes = waited
        return FinishedBatch(batch_detections(boxes, image_ids, self.category_ids, self.max_dets), result.hits,
                             result.recognised, result.seconds)
