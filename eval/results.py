"""What a run's outputs are made of, gathered as its batches finish — so that little is left after the last one.

Each finished part of a run (a progress line: a batch, or half of one) is added once, by the process that has
it: its detections are matched to the ground truth at once (:class:`~camloc.evaluation.report.MetricsStream`:
COCO's per-image matching and VOC's true/false positives), its maps' hits join wsolevaluation's tally, and its
rows of ``detections.json`` are formatted. After the last batch only the accumulation, the summary and two file
writes remain (:meth:`RunResults.outputs`). Parts may come in any order (resumed ones, other ranks'); the outputs
list every image in the images' order, each image's detections in the order its batch gave them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from camloc.evaluation import BoxAccuracy, Detections, GroundTruth
from camloc.evaluation.report import MetricsStream


def detection_rows(detections: Detections) -> list[str]:
    """Each detection as a COCO results JSON object, numbers in Python's exact shortest form (what ``json.dumps``
    of the dicts writes)."""
    return [f'{{"image_id": {i}, "category_id": {c}, "bbox": [{x!r}, {y!r}, {w!r}, {h!r}], "score": {s!r}}}'
            for i, c, (x, y, w, h), s in zip(detections.image.tolist(), detections.category.tolist(),
                                            detections.bbox.tolist(), detections.score.tolist())]


def in_image_order(detections: Detections, order: Sequence[int]) -> Detections:
    """The detections grouped by image in ``order`` (stable: each image's own order kept)."""
    rank = np.full(int(max(order)) + 1 if len(order) else 1, -1, np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(len(order))
    return detections.rows(np.argsort(rank[detections.image], kind="stable"))


class RunResults:
    """A run's metrics, wsolevaluation tally and ``detections.json`` text, fed one finished part at a time."""

    def __init__(self, truth: GroundTruth, images: Sequence[dict]):
        self.order = [im["id"] for im in images]
        self.position = {image_id: i for i, image_id in enumerate(self.order)}
        self.metrics = MetricsStream(truth, self.order)
        self.accuracy = BoxAccuracy()
        self.rows: dict[int, str] = {}  # per image: its detections' JSON objects, joined
        self.done: set[int] = set()
        self.unreadable: dict[int, str] = {}
        self.num_detections = 0

    def add(self, image_ids: Sequence[int], detections: Detections, hits: Sequence[tuple[np.ndarray, list[bool]]],
            unreadable: Sequence[tuple[int, str]] = ()) -> None:
        """A finished part: its decoded images, their detections, each image's ``(map hits, recognised)``, and the
        images it could not read with the reasons."""
        if len(image_ids) != len(hits):
            raise ValueError(f"{len(image_ids)} images but hits of {len(hits)}")
        detections = in_image_order(detections, self.order)
        self.metrics.add(detections, image_ids)
        for image_hits, recognised in hits:
            self.accuracy.add(image_hits, recognised)
        rows = detection_rows(detections)
        starts = np.flatnonzero(np.r_[True, detections.image[1:] != detections.image[:-1]]) if rows else []
        for lo, hi in zip(starts, [*starts[1:], len(rows)]):
            self.rows[int(detections.image[lo])] = ", ".join(rows[lo:hi])
        self.done.update(image_ids)
        self.unreadable.update(dict(unreadable))
        self.num_detections += len(detections)

    def missing(self, finished: dict[int, tuple[np.ndarray, list[bool]]], detections: Detections) -> None:
        """Add what a progress record holds beyond this run's own parts: ``finished`` maps each decoded image to its
        hits, ``detections`` are theirs (and perhaps of images added already, which are left out)."""
        new = [i for i in self.order if i in finished and i not in self.done]
        if new:
            self.add(new, detections.rows(np.isin(detections.image, new)), [finished[i] for i in new])

    def outputs(self, read: Sequence[int]) -> tuple[dict[str, Any], str]:
        """The metrics of the images ``read`` (the metrics report plus ``wsol``) and ``detections.json``'s text."""
        metrics = self.metrics.result(read)
        metrics["num_detections"] = self.num_detections
        metrics["wsol"] = self.accuracy.result()
        text = "[" + ", ".join(self.rows[i] for i in self.order if i in self.rows) + "]"
        return metrics, text
