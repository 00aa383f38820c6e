"""``python -m camloc.pseudo``: pseudo-labels of a training split from a checkpoint — the boxes of each image's
labelled classes, from the class maps (a classifier checkpoint, with a box recipe) or from a trained detector
(a second round), filtered by a stated rule, written as a COCO instances file for ``python -m train --detector``.

Only the split's image-level labels are read (the categories of each image's non-crowd annotations): no
ground-truth box is ever opened. The file's ``info`` records the source (checkpoint and its SHA-256, recipe,
method, input size) and the filter.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from camloc.boxes import DEFAULT_RECIPE, RECIPES
from camloc.cam import DEFAULT_METHOD, METHODS
from camloc.detector import Detector, checkpoint_kind
from camloc.evaluation import EvaluationError, ImageLabels
from camloc.io.atomic import OutputError, atomic_write_json
from camloc.io.data import DataError, check_image_files
from camloc.io.digest import file_digest
from camloc.io.images import ImageError
from camloc.models import MAX_INPUT_SIZE, MIN_INPUT_SIZE, ModelError
from camloc.models.classes import class_mismatch
from camloc.pipeline import Localizer
from camloc.pipeline.analysis import ALIGNMENTS
from camloc.pipeline.predictor import Predictor
from camloc.pseudo.labelling import PseudoLabelError, pseudo_labels
from camloc.pseudo.rule import DEFAULT_RULES, PseudoRule, default_rule
from camloc.runtime.devices import resolve_device
from camloc.runtime.errors import error_line, say

RULE_OPTIONS = ("min_relative", "top_k", "nms_iou", "min_side")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m camloc.pseudo", description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, type=Path, help="the training split's image folder")
    p.add_argument("--ann", required=True, type=Path,
                   help="its COCO instances file: only the image-level labels are read, never a box")
    p.add_argument("--checkpoint", required=True, type=Path, help="a classifier (maps + recipe) or a detector")
    p.add_argument("--out", required=True, type=Path, help="the pseudo-label file to write (COCO instances JSON)")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                   help=f"box recipe of a classifier's maps (default {DEFAULT_RECIPE})")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help="map method of a classifier")
    p.add_argument("--align", choices=ALIGNMENTS,
                   help="how a classifier's maps are laid on the image: none (the grid stretched over it) or measured "
                        "(each cell where the model's measured geometry says it looks); default: the recipe's")
    p.add_argument("--img-size", type=int, help="a classifier's input size (default: the checkpoint's)")
    cam, det = DEFAULT_RULES["classifier"], DEFAULT_RULES["detector"]
    p.add_argument("--min-relative", type=float,
                   help="keep boxes scoring ≥ this × their class's best box in the image (default "
                        f"{cam.min_relative} for a classifier's boxes, {det.min_relative} for a detector's)")
    p.add_argument("--top-k", type=int, help="at most this many boxes per labelled class (default "
                                             f"{cam.top_k} for a classifier, {det.top_k} for a detector)")
    p.add_argument("--nms-iou", type=float, help=f"NMS per class at this IoU (default {cam.nms_iou} for a classifier, "
                                                 f"{det.nms_iou} for a detector)")
    p.add_argument("--min-side", type=float,
                   help="drop boxes narrower or lower than this × the image's shorter side (default "
                        f"{cam.min_side})")
    p.add_argument("--score-threshold", type=float, default=0.05, help="a detector's lowest score considered")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="loader processes decoding images")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--limit", type=int, help="only the first N images (by id)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    if not 1 <= args.batch_size <= 1024 or not 0 <= args.workers <= 64 or (args.limit is not None and args.limit < 1):
        p.error("--batch-size must be from 1 to 1024, --workers from 0 to 64, --limit ≥ 1")
    if args.img_size is not None and not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE:
        p.error(f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    try:
        rule_for(args, "classifier")  # a bad value is refused here, before anything is loaded
        args.device = str(resolve_device(args.device))
    except ValueError as exc:
        p.error(str(exc))
    return args


def rule_for(args: argparse.Namespace, kind: str) -> PseudoRule:
    """The filter for a ``kind`` source: its default (:data:`~camloc.pseudo.rule.DEFAULT_RULES`) with the options
    given on the command line."""
    return default_rule(kind, **{name: getattr(args, name) for name in RULE_OPTIONS})


def load_source(args: argparse.Namespace) -> tuple[Predictor, dict[str, Any]]:
    """The checkpoint as a Localizer (classifier) or a Detector, and what ``info`` records of it."""
    kind = checkpoint_kind(args.checkpoint)
    described: dict[str, Any] = {"kind": kind, "checkpoint": str(args.checkpoint),
                                 "checkpoint_sha256": file_digest(args.checkpoint)}
    if kind == "detector":
        source: Predictor = Detector.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                                     score_threshold=args.score_threshold)
        return source, {**described, "arch": source.meta["arch"], "score_threshold": args.score_threshold}
    sidecar = args.checkpoint.with_suffix(".json")
    if sidecar.is_file():
        described["sidecar_sha256"] = file_digest(sidecar)
    localizer = Localizer.from_checkpoint(args.checkpoint, method=args.method, recipe=args.recipe, classes="all",
                                          align=args.align, img_size=args.img_size, device=args.device,
                                          precision=args.precision,
                                          max_dets=0)  # every box of the labelled classes: the filter caps them
    return localizer, {**described, "arch": localizer.meta["arch"], "method": localizer.method,
                       "recipe": args.recipe, "align": localizer.align, "img_size": localizer.img_size,
                       "views": [list(v) for v in localizer.views()]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.images.is_dir():
        raise PseudoLabelError(f"--images {args.images} is not a folder")
    labels = ImageLabels(args.ann)
    check_image_files(args.images, labels.images[:args.limit], args.ann.name)
    source, described = load_source(args)
    problem = class_mismatch(source.category_ids, source.class_names, labels.category_names, args.ann.name)
    if problem:
        raise PseudoLabelError(f"--checkpoint {args.checkpoint}: {problem}")
    document = pseudo_labels(source, args.images, labels, rule_for(args, described["kind"]), args.batch_size,
                             args.workers, args.limit,
                             {"description": "camloc pseudo-labels: boxes of each image's labelled classes; no "
                                             "ground-truth box was read", "source": described,
                              "labels": args.ann.name})
    atomic_write_json(args.out, document)
    info = document["info"]
    print(f"wrote {args.out}: {info['boxes']} boxes on {info['images']} images "
          f"({info['images_without_labels']} without labels; left out: {len(info['images_incomplete'])} with a "
          f"labelled class unboxed, {len(info['images_unreadable'])} unreadable)")
    return document


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m camloc.pseudo``; a problem ends it with exit status 2 and one ``error:`` line."""
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        say("\ninterrupted; nothing was written")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        say(error_line(exc, (PseudoLabelError, EvaluationError, ModelError, DataError, ImageError, OutputError,
                             OSError, ValueError)))
        return 2
    return 0
