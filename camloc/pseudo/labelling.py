"""Pseudo-labels of a training split: each image's labelled classes boxed by a source (a Localizer's recipe on
the class maps, or a trained Detector), filtered by a :class:`~camloc.pseudo.rule.PseudoRule`, as a COCO
instances document. Only image-level labels are read (:class:`~camloc.evaluation.ImageLabels`): no box of
the split is ever seen."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from camloc.evaluation import Detections, ImageLabels
from camloc.io.reader import read_split
from camloc.pipeline import Localizer
from camloc.pipeline.predictor import Predictor
from camloc.pseudo.rule import DEFAULT_RULES, PseudoRule


class PseudoLabelError(ValueError):
    """Pseudo-labels that cannot be made; the message says why."""


def labeller(source: Predictor) -> Predictor:
    """The source as it boxes pseudo-labels: a Localizer's recipe gates *every* labelled class in (the labels say
    the class is there, whatever its probability); a detector as it is."""
    if isinstance(source, Localizer):
        chosen = copy.copy(source)
        chosen.recipe = source.recipe_for(classes="all")
        return chosen
    return source


def source_boxes(source: Predictor, pixels: list, ids: list[int], labels: dict[int, list[int]]) -> Detections:
    """A batch's boxes from ``source``: a Localizer computes the maps of each image's labelled classes only."""
    if isinstance(source, Localizer):
        index = {cid: k for k, cid in enumerate(source.category_ids)}
        return source.detect(pixels, ids, classes=[[index[c] for c in labels[i]] for i in ids])
    return source.detect(pixels, ids)


def pseudo_labels(source: Predictor, folder: str | Path, labels: ImageLabels, rule: PseudoRule | None = None,
                  batch_size: int = 8, workers: int = 0, limit: int | None = None,
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The COCO instances document of ``labels``' images (the first ``limit`` by id) with ``source``'s boxes of
    each image's labelled classes, kept by ``rule`` (default: the source kind's,
    :data:`~camloc.pseudo.rule.DEFAULT_RULES`), as annotations (``bbox``, ``area`` = w·h, ``iscrowd`` 0 and
    the box's ``score``). Each image entry gets ``image_labels`` (its labelled category ids) and its decoded
    ``width``/``height``. Images without labels stay as negatives (nothing to box); an image with a labelled
    class that got no box, or that cannot be read, is left out and counted in ``info``."""
    images = labels.images[:limit]
    if not images:
        raise PseudoLabelError(f"{folder}: the annotation file lists no images")
    per_image = labels.labels()
    used = sorted({c for im in images for c in per_image[im["id"]]})
    unknown = sorted(set(used) - set(source.category_ids))
    if unknown:
        raise PseudoLabelError(f"the images are labelled with category {unknown[0]} "
                               f"({labels.category_names[unknown[0]]!r}), which the model does not know "
                               f"({len(unknown)} such categories); use a model of these categories")
    chosen = labeller(source)
    rule = rule or DEFAULT_RULES["classifier" if isinstance(source, Localizer) else "detector"]
    todo = [im for im in images if per_image[im["id"]]]
    sizes: dict[int, tuple[int, int]] = {}
    parts, unreadable = [], []
    device = getattr(chosen, "device", "cpu")
    with tqdm(total=len(todo), unit="img", desc="pseudo-labels", file=sys.stderr) as bar:
        for readable, failed in read_split(folder, todo, batch_size, device, workers):
            unreadable += failed
            if readable:
                ids = [image_id for image_id, _ in readable]
                sizes.update({i: (int(p.shape[-2]), int(p.shape[-1])) for i, p in readable})
                found = source_boxes(chosen, [p for _, p in readable], ids, per_image)
                parts.append(rule.keep(found, {i: per_image[i] for i in ids}, sizes))
            bar.update(len(readable) + len(failed))
    kept = Detections.concatenate(parts)
    boxed = set(zip(kept.image.tolist(), kept.category.tolist()))
    incomplete = [i for i in sizes if any((i, c) not in boxed for c in per_image[i])]
    left_out = set(incomplete) | {i for i, _ in unreadable}
    return coco_document(images, per_image, sizes, kept.rows(~np.isin(kept.image, list(left_out))), left_out,
                         labels, {**(info or {}), "filter": rule.as_dict(), "images_labelled": len(images),
                                  "images_without_labels": len(images) - len(todo),
                                  "images_incomplete": sorted(incomplete),
                                  "images_unreadable": [{"image_id": i, "reason": r} for i, r in unreadable]})


def coco_document(images: list[dict], per_image: dict[int, list[int]], sizes: dict[int, tuple[int, int]],
                  kept: Detections, left_out: set[int], labels: ImageLabels, info: dict[str, Any]) -> dict[str, Any]:
    """The pseudo-labels as COCO instances: the images kept, one annotation per box (ids from 1, in order)."""
    entries = []
    for im in images:
        if im["id"] in left_out:
            continue
        height, width = sizes.get(im["id"], (im.get("height"), im.get("width")))
        entries.append({**im, "width": width, "height": height, "image_labels": per_image[im["id"]]})
    annotations = [{"id": n, "image_id": i, "category_id": c, "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                    "score": s}
                   for n, (i, c, box, s) in enumerate(zip(kept.image.tolist(), kept.category.tolist(),
                                                          kept.bbox.tolist(), kept.score.tolist()), start=1)]
    return {"info": {**info, "images": len(entries), "boxes": len(annotations)}, "images": entries,
            "annotations": annotations, "categories": labels.data["categories"]}
