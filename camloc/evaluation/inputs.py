"""Ground truth and detections: read, checked and turned into flat arrays once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class EvaluationError(ValueError):
    """Ground truth or detections that cannot be evaluated; the message says what is wrong."""



def _read_json(source: str | Path | dict | list, what: str) -> Any:
    if isinstance(source, (dict, list)):
        return source
    path = Path(source)
    if not path.is_file():
        raise EvaluationError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{what} file {path} is not valid JSON ({exc})") from None


class GroundTruth:
    """A COCO instances file as flat arrays (annotations in file order)."""

    def __init__(self, source: str | Path | dict):
        data = _read_json(source, "annotation")
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
            raise EvaluationError("annotation file must be COCO instances JSON with images, annotations, categories")
        if not data["categories"]:
            raise EvaluationError("annotation file has no categories")
        self.data = data
        self.image_ids = np.array(sorted({int(im["id"]) for im in data["images"]}), dtype=np.int64)
        self.category_ids = np.array(sorted({int(c["id"]) for c in data["categories"]}), dtype=np.int64)
        self.category_names = {int(c["id"]): c.get("name", str(c["id"])) for c in data["categories"]}
        anns = data["annotations"]
        try:
            self.ann_image = np.array([a["image_id"] for a in anns], dtype=np.int64)
            self.ann_category = np.array([a["category_id"] for a in anns], dtype=np.int64)
            self.ann_bbox = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            self.ann_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
            self.ann_id = np.array([a["id"] for a in anns], dtype=np.int64)
            self.ann_area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns],
                                     dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise EvaluationError(f"an annotation lacks a valid image_id/category_id/bbox/id ({exc})") from None


class Detections:
    """COCO results (a path or a list of dicts) as flat arrays, parsed and checked once, so that
    several metrics over the same detections do not parse them again."""

    def __init__(self, source: str | Path | Sequence[dict]):
        dets = _read_json(source, "detections") if isinstance(source, (str, Path)) else source
        if not isinstance(dets, list):
            raise EvaluationError("detections must be a list of {image_id, category_id, bbox, score} (COCO results)")
        try:
            self.image = np.array([d["image_id"] for d in dets], dtype=np.int64)
            self.category = np.array([d["category_id"] for d in dets], dtype=np.int64)
            self.bbox = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
            self.score = np.array([d["score"] for d in dets], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise EvaluationError(f"a detection lacks a valid image_id/category_id/bbox/score ({exc})") from None
        if len(self.bbox) != len(self.score):
            raise EvaluationError("every detection bbox must have exactly 4 numbers [x, y, w, h]")
        bad = ~np.isfinite(self.score) | ~np.isfinite(self.bbox).all(1)
        if bad.any():
            raise EvaluationError(f"{int(bad.sum())} detections have a NaN/inf score or bbox "
                                  f"(first at position {int(np.flatnonzero(bad)[0])}); fix the detector output")

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def of(cls, source: Detections | str | Path | Sequence[dict]) -> Detections:
        return source if isinstance(source, Detections) else cls(source)
