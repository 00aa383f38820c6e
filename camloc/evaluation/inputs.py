"""Ground truth and detections: read, checked and turned into flat arrays once.

This is the evaluator's boundary: everything the metrics read is validated here, so the metric
modules can trust their arrays. An input that breaks the COCO format is an
:class:`EvaluationError` whose one-line message names the file (or "annotations"/"detections"),
the entry, the field, what is wrong and what to do:

* ids (``id``, ``image_id``, ``category_id``, the ``image_ids`` parameter) are integers in the
  64-bit range — never rounded or truncated (``1.5``, ``1.0``, ``"1"`` and ``True`` are refused);
  image, category and annotation ids are unique;
* boxes are exactly 4 finite numbers ``[x, y, w, h]`` (ground truth: ``w, h ≥ 0``), scores and
  areas finite numbers (areas ≥ 0), ``iscrowd`` 0 or 1, category names strings;
* detections are on images the ground truth lists.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NUMBER_TYPES = (int, float, np.integer, np.floating)
_BOX_TYPES = (list, tuple, np.ndarray)


class EvaluationError(ValueError):
    """Ground truth or detections that cannot be evaluated; the message says what is wrong."""


def read_json(source: str | Path | dict | list, what: str) -> Any:
    """``source`` itself if it is already parsed (a dict or list), else the JSON document at that path."""
    if isinstance(source, (dict, list)):
        return source
    path = Path(source)
    try:
        if path.is_dir():
            raise EvaluationError(f"{what} file {path} is a folder; pass the JSON file")
        if not path.is_file():
            raise EvaluationError(f"{what} file {path} does not exist")
        return json.loads(path.read_bytes())
    except EvaluationError:
        raise
    except RecursionError:
        raise EvaluationError(f"{what} file {path} nests too deeply to be COCO JSON") from None
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        detail = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise EvaluationError(f"{what} file {path} is not valid JSON ({detail})") from None


def _label(source: Any, default: str) -> str:
    return str(source) if isinstance(source, (str, Path)) else default


def _first(values: Sequence[Any], bad: Any) -> int:
    return next(i for i, v in enumerate(values) if bad(v))


def _field(entries: Sequence[dict], key: str, where: str) -> list[Any]:
    """``entry[key]`` of every entry; an entry without the key is an error."""
    try:
        return [entry[key] for entry in entries]
    except KeyError:
        index = _first(entries, lambda e: key not in e)
        raise EvaluationError(f"{where} #{index} has no {key!r}; every entry needs one") from None


def _dicts(entries: Sequence[Any], what: str) -> Sequence[dict]:
    if not set(map(type, entries)) <= {dict} and not all(isinstance(e, dict) for e in entries):
        index = _first(entries, lambda e: not isinstance(e, dict))
        raise EvaluationError(f"{what} #{index} is {str(entries[index])[:40]}, not a JSON object")
    return entries


def int_array(values: Sequence[Any], what: str) -> np.ndarray:
    """Integer ids as int64; a non-integer (bool, float, string, ...) or one outside int64 is an error."""
    kinds = set(map(type, values))
    if any(k is bool or not issubclass(k, (int, np.integer)) for k in kinds):
        index = _first(values, lambda v: isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)))
        raise EvaluationError(f"{what} #{index} is {values[index]!r}: ids must be integers (not rounded or "
                              "truncated); fix the file")
    if not kinds <= {int}:
        values = [int(v) for v in values]
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        index = _first(values, lambda v: not INT64_MIN <= v <= INT64_MAX)
        raise EvaluationError(f"{what} #{index} is {values[index]}, outside the 64-bit integer range") from None


def float_array(values: Sequence[Any], what: str) -> np.ndarray:
    """Finite real numbers as float64; a bool, string, None, NaN or infinity is an error."""
    kinds = set(map(type, values))
    if any(k is bool or k is np.bool_ or not issubclass(k, _NUMBER_TYPES) for k in kinds):
        index = _first(values, lambda v: isinstance(v, (bool, np.bool_)) or not isinstance(v, _NUMBER_TYPES))
        raise EvaluationError(f"{what} #{index} is {str(values[index])[:40]!r}, not a number")
    try:
        array = np.array(values, dtype=np.float64)
        finite = bool(np.isfinite(array).all())
    except OverflowError:  # an integer beyond float64
        finite = False
    if not finite:
        index = _first(values, lambda v: not _finite(v))
        raise EvaluationError(f"{what} #{index} is {str(values[index])[:40]}; numbers must be finite")
    return array


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def box_array(boxes: Sequence[Any], what: str, ground_truth: bool) -> np.ndarray:
    """``(n, 4)`` float64 boxes ``[x, y, w, h]``: exactly 4 finite numbers each (ground truth: w, h ≥ 0)."""
    if not (set(map(type, boxes)) <= {list, tuple} and set(map(len, boxes)) <= {4}) and not all(
            isinstance(b, _BOX_TYPES) and len(b) == 4 for b in boxes):
        index = _first(boxes, lambda b: not (isinstance(b, _BOX_TYPES) and len(b) == 4))
        raise EvaluationError(f"{what} #{index} is {str(boxes[index])[:60]}; a bbox is 4 numbers [x, y, w, h]")
    flat = [v for box in boxes for v in box]
    try:
        array = float_array(flat, what).reshape(-1, 4)
    except EvaluationError:
        index = _first(boxes, lambda b: not _is_finite_box(b))
        raise EvaluationError(f"{what} #{index} is {str(boxes[index])[:60]}; a bbox is 4 finite numbers "
                              "[x, y, w, h]") from None
    if ground_truth and (array[:, 2:] < 0).any():
        index = int(np.flatnonzero((array[:, 2:] < 0).any(1))[0])
        raise EvaluationError(f"{what} #{index} is {boxes[index]}: a ground-truth box needs width and height ≥ 0")
    return array


def _is_finite_box(box: Any) -> bool:
    try:
        float_array(list(box), "bbox")
    except EvaluationError:
        return False
    return True


def _unique(ids: np.ndarray, what: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EvaluationError(f"{what} {int(values[counts > 1][0])} is listed {int(counts.max())} times; "
                              "ids must be unique")


class AnnotationIdWarning(UserWarning):
    """An annotation file whose ids change COCO AP (an annotation with id 0)."""


class ImageLabels:
    """A COCO instances file read for its *image-level* labels only: its images, its categories and the
    ``(image_id, category_id, iscrowd)`` of each annotation, checked as :class:`GroundTruth` checks them. No
    annotation's ``bbox``, ``area`` or ``segmentation`` is read (weak supervision: what learns from labels
    alone — pseudo-labels — cannot see a box). :class:`GroundTruth` is this plus the boxes."""

    def __init__(self, source: str | Path | dict):
        label = _label(source, "annotations")
        data = read_json(source, "annotation")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise EvaluationError(f"{label}: annotation file must be COCO instances JSON: an object whose images, "
                                  "annotations and categories are lists")
        if not data["categories"]:
            raise EvaluationError(f"{label}: annotation file has no categories")
        self.data = data
        images = _dicts(data["images"], f"{label}: image")
        categories = _dicts(data["categories"], f"{label}: category")
        anns = _dicts(data["annotations"], f"{label}: annotation")
        image_ids = int_array(_field(images, "id", f"{label}: image"), f"{label}: image id")
        _unique(image_ids, f"{label}: image id")
        self.image_ids = np.sort(image_ids)
        category_ids = int_array(_field(categories, "id", f"{label}: category"), f"{label}: category id")
        _unique(category_ids, f"{label}: category id")
        self.category_ids = np.sort(category_ids)
        names = [c.get("name", str(c["id"])) for c in categories]
        if not all(isinstance(n, str) for n in names):
            index = _first(names, lambda n: not isinstance(n, str))
            raise EvaluationError(f"{label}: category #{index} has name {names[index]!r}; names are strings")
        self.category_names = dict(zip(category_ids.tolist(), names))
        where = f"{label}: annotation"
        self.ann_id = int_array(_field(anns, "id", where), f"{where} id")
        _unique(self.ann_id, f"{where} id")
        if (self.ann_id == 0).any():
            index = int(np.flatnonzero(self.ann_id == 0)[0])
            warnings.warn(f"{label}: annotation #{index} has id 0, which pycocotools "
                          "(and camloc, to give its numbers) takes for 'no match': a detection matching that object "
                          "counts as a false positive and the object as missed; number annotations from 1",
                          AnnotationIdWarning, stacklevel=2)
        self.ann_image = int_array(_field(anns, "image_id", where), f"{where} image_id")
        self.ann_category = int_array(_field(anns, "category_id", where), f"{where} category_id")
        crowd = [a.get("iscrowd", 0) for a in anns]
        if not all(type(c) in (int, bool) and c in (0, 1) for c in crowd):
            index = _first(crowd, lambda c: not (type(c) in (int, bool) and c in (0, 1)))
            raise EvaluationError(f"{where} #{index} has iscrowd {crowd[index]!r}; it must be 0 or 1")
        self.ann_crowd = np.array(crowd, dtype=bool)

    @property
    def images(self) -> list[dict[str, Any]]:
        """The image entries, by id."""
        return sorted(self.data["images"], key=lambda im: im["id"])

    def labels(self) -> dict[int, list[int]]:
        """Per image id (every image listed), the sorted category ids it has a non-crowd annotation of."""
        out: dict[int, list[int]] = {int(i): [] for i in self.image_ids.tolist()}
        pairs = np.unique(np.stack([self.ann_image, self.ann_category], 1)[~self.ann_crowd], axis=0)
        for image_id, category in pairs.tolist():  # sorted by image, then category
            if image_id in out:
                out[image_id].append(category)
        return out


class GroundTruth(ImageLabels):
    """A COCO instances file as flat arrays (annotations in file order), checked once: :class:`ImageLabels` and
    the boxes."""

    def __init__(self, source: str | Path | dict):
        super().__init__(source)
        label = _label(source, "annotations")
        anns, where = self.data["annotations"], f"{label}: annotation"
        self.ann_bbox = box_array(_field(anns, "bbox", where), f"{where} bbox", ground_truth=True)
        has_area = np.array(["area" in a for a in anns], dtype=bool)
        area = float_array([a["area"] for a in anns if "area" in a], f"{where} area (of those with one)")
        if (area < 0).any():
            raise EvaluationError(f"{where} area {float(area[area < 0][0])} is negative; areas are ≥ 0")
        self.ann_area = self.ann_bbox[:, 2] * self.ann_bbox[:, 3]
        self.ann_area[has_area] = area

    def select_images(self, image_ids: Iterable[int] | None) -> np.ndarray:
        """The sorted ids of the evaluated images: all of them, or ``image_ids`` (integers this
        ground truth lists; an unknown or non-integer id is an error)."""
        if image_ids is None:
            return self.image_ids
        if isinstance(image_ids, (str, bytes, dict)) or not isinstance(image_ids, Iterable):
            raise EvaluationError(f"image_ids must be a list of integer image ids, got {str(image_ids)[:40]!r}")
        ids = int_array(list(image_ids), "image_ids")
        unknown = ids[~np.isin(ids, self.image_ids)]
        if len(unknown):
            raise EvaluationError(f"image_ids lists images that are not in the annotation file "
                                  f"(e.g. {int(unknown[0])}); pass ids of the ground truth's images")
        return np.unique(ids)

    def check_detections(self, dets: Detections) -> None:
        """Detections must be on images this ground truth lists (as in pycocotools)."""
        unknown = ~np.isin(dets.image, self.image_ids)
        if unknown.any():
            raise EvaluationError(f"{int(unknown.sum())} detections are on images not in the annotation file "
                                  f"(e.g. image_id {int(dets.image[unknown][0])}); evaluate against the matching "
                                  "file")


class Detections:
    """COCO results (a path or a list of dicts) as flat arrays, parsed and checked once, so that
    several metrics over the same detections do not parse them again."""

    def __init__(self, source: str | Path | Sequence[dict]):
        label = _label(source, "detections")
        dets = read_json(source, "detections") if isinstance(source, (str, Path)) else source
        if not isinstance(dets, (list, tuple)):
            raise EvaluationError(f"{label}: detections must be a list of {{image_id, category_id, bbox, score}} "
                                  "(COCO results)")
        where = f"{label}: detection"
        entries = _dicts(dets, where)
        self.image = int_array(_field(entries, "image_id", where), f"{where} image_id")
        self.category = int_array(_field(entries, "category_id", where), f"{where} category_id")
        self.bbox = box_array(_field(entries, "bbox", where), f"{where} bbox", ground_truth=False)
        self.score = float_array(_field(entries, "score", where), f"{where} score")

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def of(cls, source: Detections | str | Path | Sequence[dict]) -> Detections:
        return source if isinstance(source, Detections) else cls(source)

    @classmethod
    def from_arrays(cls, image: np.ndarray, category: np.ndarray, bbox: np.ndarray, score: np.ndarray) -> Detections:
        """Detections from flat arrays (a pipeline's output: no dicts built); the same checks: integer ids,
        ``(n, 4)`` boxes and scores of finite numbers."""
        made = cls.__new__(cls)
        made.image, made.category = (int_matrix(a, what) for a, what in ((image, "image ids"),
                                                                          (category, "category ids")))
        made.bbox = real_matrix(np.asarray(bbox, dtype=np.float64).reshape(-1, 4), "detection boxes")
        made.score = real_matrix(np.asarray(score, dtype=np.float64).reshape(-1, 1), "detection scores")[:, 0]
        if not len(made.image) == len(made.category) == len(made.bbox) == len(made.score):
            raise EvaluationError(f"detection arrays differ in length: {len(made.image)} image ids, "
                                  f"{len(made.category)} category ids, {len(made.bbox)} boxes, "
                                  f"{len(made.score)} scores")
        return made

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        return cls.from_arrays(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
                                 for f in ("image", "category", "bbox", "score")))

    def rows(self, keep: np.ndarray) -> Detections:
        """The detections at positions or mask ``keep``."""
        return Detections.from_arrays(self.image[keep], self.category[keep], self.bbox[keep], self.score[keep])

    def to_dicts(self) -> list[dict[str, Any]]:
        """COCO results: ``{image_id, category_id, bbox, score}`` per detection."""
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(self.image.tolist(), self.category.tolist(), self.bbox.tolist(),
                                      self.score.tolist())]


def int_matrix(values: Any, what: str) -> np.ndarray:
    """A 1-D array of integers as int64 (a float array is refused: ids are never rounded)."""
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise EvaluationError(f"{what} must be a 1-D array of integers, got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


def real_matrix(values: Any, what: str, kinds: str = "iuf") -> np.ndarray:
    """A 2-D array of finite real numbers (dtype kinds ``kinds``: b bool, i/u integer, f float)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{what} are not an array of numbers ({exc})") from None
    if array.dtype.kind not in kinds or array.ndim != 2:
        raise EvaluationError(f"{what} must be a 2-D array of real numbers, got {array.dtype} of shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise EvaluationError(f"{what} include NaN or infinite values")
    return array
