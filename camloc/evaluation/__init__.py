"""Detection metrics: the COCO bbox protocol (equal to pycocotools to the last bit), VOC mAP,
one JSON-ready report, and image-level classification AP.

One job per module: ``inputs`` (ground truth and detections, read and checked once),
``coco_match`` (per-image matching, any set of images at a time), ``coco`` (:func:`coco_evaluate`: accumulate,
summarize), ``voc`` (:func:`voc_map`),
``report`` (:func:`localization_metrics`), ``classification`` (:func:`classification_ap`),
``wsol`` (wsolevaluation's MaxBoxAccV2, GT-known and Top-1 Loc of the maps: :class:`BoxAccuracy`),
``faithfulness`` (Average Drop / Increase in Confidence, insertion / deletion AUC: :class:`Faithfulness`).
"""

from camloc.evaluation.classification import classification_ap
from camloc.evaluation.coco import coco_evaluate
from camloc.evaluation.coco_match import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoMatches,
    box_iou_pairs,
    match_coco,
)
from camloc.evaluation.faithfulness import Faithfulness, confidence_change, insertion_deletion
from camloc.evaluation.inputs import Detections, EvaluationError, GroundTruth
from camloc.evaluation.report import localization_metrics
from camloc.evaluation.voc import voc_average_precision, voc_map
from camloc.evaluation.wsol import BoxAccuracy, image_hits, recognised_classes

__all__ = ["AREA_LABELS", "AREA_RANGES", "IOU_THRESHOLDS", "MAX_DETS", "RECALL_THRESHOLDS", "STAT_NAMES",
           "BoxAccuracy", "CocoMatches", "Detections", "EvaluationError", "Faithfulness", "GroundTruth",
           "box_iou_pairs", "classification_ap", "coco_evaluate", "confidence_change", "image_hits",
           "insertion_deletion", "localization_metrics", "match_coco", "recognised_classes", "voc_average_precision",
           "voc_map"]
