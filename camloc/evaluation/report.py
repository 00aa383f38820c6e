"""One JSON-ready report: what `python -m eval` writes and the app's PR page reads — in one call, or fed image set
by image set as a long run finishes its batches (:class:`MetricsStream`), with the same numbers either way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camloc.evaluation.coco import coco_result
from camloc.evaluation.coco_match import IOU_THRESHOLDS, RECALL_THRESHOLDS, CocoMatches, match_coco
from camloc.evaluation.inputs import Detections, EvaluationError, GroundTruth
from camloc.evaluation.voc import VocMatches, match_voc, voc_result


def _curve(values: np.ndarray) -> list[float] | None:
    return None if (values < 0).all() else [round(float(v), 6) for v in np.clip(values, 0, None)]


class MetricsStream:
    """:func:`localization_metrics` of ``image_ids`` (default: every image of ``gt``), fed a part at a time.

    :meth:`add` matches the detections of some of the images to their ground truth at once (COCO's per-image
    matching and VOC's true/false positives: independent per image, so this is most of the work); :meth:`result`
    only accumulates and summarizes. Parts cover disjoint images, each image's detections in one part, each part
    listing its detections in its images' order (as a run's batches do); added in any order, the result is that of
    one call on all of them listed in the images' order (VOC ranks equal scores in the order they are listed).
    """

    def __init__(self, gt: str | Path | dict | GroundTruth, image_ids: Iterable[int] | None = None):
        self.truth = gt if isinstance(gt, GroundTruth) else GroundTruth(gt)
        self.img_ids = self.truth.select_images(None if image_ids is None else list(image_ids))
        self.coco: list[CocoMatches] = []
        self.voc: list[VocMatches] = []
        self.seen: set[int] = set()
        self.num_detections = 0

    def add(self, detections: Detections | str | Path | Sequence[dict], image_ids: Iterable[int]) -> None:
        """Match the detections of the images ``image_ids`` (detections on other images are an error)."""
        dets = Detections.of(detections)
        self.truth.check_detections(dets)
        part = np.unique(np.asarray(list(image_ids), dtype=np.int64))
        stray = ~np.isin(dets.image, part)
        if stray.any():
            raise EvaluationError(f"{int(stray.sum())} detections are on images outside this part (e.g. "
                                  f"{int(dets.image[stray][0])}); add each image's detections with its image")
        repeated = [i for i in part.tolist() if i in self.seen]
        if repeated:
            raise EvaluationError(f"image {repeated[0]} was added twice; each image belongs to one part")
        self.seen.update(part.tolist())
        part = part[np.isin(part, self.img_ids)]
        self.coco.append(match_coco(self.truth, dets, self.img_ids, part))
        self.voc.append(match_voc(self.truth, dets, self.img_ids, 0.5, part))
        self.num_detections += int(np.isin(dets.image, part).sum())

    def result(self, image_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """The report (see :func:`localization_metrics`) of every image, or of ``image_ids`` (some of them: a run
        leaves out the images it could not read)."""
        img_ids = self.img_ids if image_ids is None else self.truth.select_images(list(image_ids))
        if not np.isin(img_ids, self.img_ids).all():
            raise EvaluationError("image_ids must be images this stream evaluates")
        coco, voc = CocoMatches.concatenate(self.coco), VocMatches.concatenate(self.voc)
        if len(img_ids) < len(self.img_ids):
            coco = coco.rows(np.isin(self.img_ids[coco.group // len(self.truth.category_ids)], img_ids))
            voc = voc.rows(np.isin(self.img_ids[voc.image], img_ids))
        coco = coco_result(self.truth, img_ids, coco)
        voc = voc_result(self.truth, img_ids, voc, 0.5)
        precision = coco["precision"][:, :, :, 0, -1]  # (T, R, K)
        t50, t75 = int(np.where(IOU_THRESHOLDS == 0.5)[0][0]), int(np.where(IOU_THRESHOLDS == 0.75)[0][0])
        per_class, curves = [], {}
        for k, cid in enumerate(coco["params"]["category_ids"]):
            row = coco["per_class"][cid]
            per_class.append({"category_id": cid, "name": row["name"], "num_gt": row["num_gt"], "AP": row["AP"],
                              "AP50": row["AP50"], "AP75": row["AP75"], "voc_AP50": voc["per_class"][cid]})
            if row["AP"] is not None:
                curves[str(cid)] = {"name": row["name"], "iou50": _curve(precision[t50, :, k]),
                                    "iou75": _curve(precision[t75, :, k]),
                                    "iou50_95": _curve(precision[:, :, k].mean(0))}
        return {"coco": coco["stats_by_name"], "coco_stats": coco["stats"], "voc_map50": voc["map"],
                "per_class": per_class, "num_images": len(coco["params"]["image_ids"]),
                "num_detections": self.num_detections,
                "pr_curves": {"recall": RECALL_THRESHOLDS.round(2).tolist(), "classes": curves}}


def localization_metrics(gt: str | Path | dict | GroundTruth, detections: Detections | str | Path | Sequence[dict],
                         image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """COCO stats, VOC mAP@0.5, per-class APs and PR curves, as plain JSON data.

    ``coco``: the 12 stats by name; ``voc_map50``; ``per_class``: a list of
    ``{category_id, name, num_gt, AP, AP50, AP75, voc_AP50}`` (None without ground truth);
    ``pr_curves``: ``recall`` (the 101 points) and per category id the precision at IoU 0.50
    (``iou50``), 0.75 (``iou75``) and its mean over 0.50:0.95 (``iou50_95``), area all, 100 dets.
    """
    stream = MetricsStream(gt, image_ids)
    dets = Detections.of(detections)
    stream.add(dets, np.unique(dets.image).tolist() + stream.img_ids.tolist())
    result = stream.result()
    result["num_detections"] = len(dets)
    return result
