"""Detectors trained on camloc's own pseudo-boxes: build (:mod:`~camloc.detector.building`), save and load
(:mod:`~camloc.detector.checkpoints`, metadata ``kind: "detector"``), and run (:class:`Detector`, a sibling of
:class:`~camloc.pipeline.Localizer` whose ``detect`` gives the same :class:`~camloc.evaluation.Detections`)."""

from camloc.detector.building import DEFAULT_DETECTOR, DETECTOR_KIND, HEADS, build_detector, parse_name
from camloc.detector.checkpoints import (
    checkpoint_kind,
    complete_detector_meta,
    detector_payload,
    is_detector_meta,
    load_any,
    load_detector,
)
from camloc.detector.inference import SCORE_THRESHOLD, Detector

__all__ = ["DEFAULT_DETECTOR", "DETECTOR_KIND", "HEADS", "SCORE_THRESHOLD", "Detector",
           "build_detector", "checkpoint_kind", "complete_detector_meta", "detector_payload", "is_detector_meta",
           "load_any", "load_detector", "parse_name"]
