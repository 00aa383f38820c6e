"""Per-class probability thresholds for class gating, calibrated on labelled images (the training set).

A box recipe's ``calibrated`` gate (``classes="calibrated"``) boxes class ``k`` of an image when its
probability reaches the class's own threshold, ``p_k ≥ t_k``, instead of one floor for every class:

``t_k = max(floor, Q_q{ p_k(x) : x a calibration image where class k is present })`` for a class present
in at least ``min_positives`` calibration images, else ``floor`` — ``Q_q`` the ``q``-quantile (linear
interpolation): a class the classifier is sure of when present is gated high, so its low-probability
boxes in images where it is absent (false positives ranked among the true ones) go; a rare or
unsure class keeps the floor.

The thresholds live in the model's metadata (``meta["class_thresholds"]``, one per class, checked by
:func:`camloc.models.complete_meta`): ``python -m camloc.calibration`` writes them into a camloc checkpoint
(from a camloc checkpoint or a torchvision state_dict + JSON sidecar). A model without them gates
``calibrated`` with ``floor`` for every class (the recipes' global ``prob:0.001``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from camloc.boxes import CALIBRATION_FLOOR
from camloc.io.atomic import OutputError
from camloc.io.data import CocoIndex, CocoMultiLabel, DataError, collate_skipping, eval_transform
from camloc.io.preprocess import normalise
from camloc.models import (
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    CamModel,
    ModelError,
    load_model,
    probabilities,
    save_checkpoint,
)
from camloc.models.geometry import META_KEY, geometry_entries
from camloc.pipeline.analysis import view_sizes
from camloc.runtime.devices import resolve_device
from camloc.runtime.errors import error_line, say

#: The gate's floor (every class below it is skipped: the recipes' own), the quantile and the evidence a class
#: needs.
FLOOR, QUANTILE, MIN_POSITIVES = CALIBRATION_FLOOR, 0.05, 5


def class_thresholds(probs: Tensor, present: Tensor, quantile: float = QUANTILE, floor: float = FLOOR,
                     min_positives: int = MIN_POSITIVES) -> list[float]:
    """``t_k`` of every class (module docstring) from probabilities ``(N, K)`` and presence ``(N, K)`` (bool)."""
    if probs.shape != present.shape or probs.ndim != 2:
        raise ValueError(f"probs and present must both be (N, K), got {tuple(probs.shape)} and {tuple(present.shape)}")
    if not 0.0 <= quantile <= 1.0 or not 0.0 <= floor <= 1.0:
        raise ValueError(f"quantile and floor must be in [0, 1], got {quantile} and {floor}")
    masked = torch.where(present.bool(), probs.double(), torch.nan)
    quantiles = torch.nanquantile(masked, quantile, dim=0) if len(probs) else probs.new_full(probs.shape[1:], torch.nan)
    enough = present.bool().sum(0) >= min_positives
    thresholds = torch.where(enough, quantiles.clamp(min=floor), torch.full_like(quantiles, floor))
    return [float(t) for t in thresholds]


def calibration_probabilities(model: CamModel, meta: dict[str, Any], index: CocoIndex, batch_size: int = 16,
                              device: str | torch.device = "cpu", img_size: int | None = None,
                              limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Class probabilities ``(N, K)`` of the readable images of ``index`` (the first ``limit``) at ``img_size``
    (default: the model's input size; the view class gating sees) and their labels ``(N, K)``."""
    size = img_size or meta["input_size"]
    dataset = CocoMultiLabel(index, eval_transform(size), limit)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping)
    model = model.to(device).eval()
    mean, std = (torch.tensor(meta[key], device=device).view(1, 3, 1, 1) for key in ("mean", "std"))
    probs, labels = [], []
    with torch.inference_mode():
        for batch, _ in loader:
            if batch is None:
                continue
            images, target = batch
            x = normalise(images.to(device), mean, std)
            probs.append(probabilities(model(x)[0].float(), meta["activation"]).cpu())
            labels.append(target.bool())
    if not probs:
        raise DataError(f"none of the {len(dataset)} images in {index.images_dir} could be read")
    return torch.cat(probs), torch.cat(labels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m camloc.calibration",
                                     description="Per-class gating thresholds from labelled images, into a checkpoint")
    parser.add_argument("--checkpoint", required=True, type=Path, help="camloc checkpoint or state_dict + .json")
    parser.add_argument("--images", required=True, type=Path, help="folder of the calibration (training) images")
    parser.add_argument("--ann", required=True, type=Path, help="their COCO instances JSON")
    parser.add_argument("--out", required=True, type=Path, help="camloc checkpoint to write (may be --checkpoint)")
    parser.add_argument("--quantile", type=float, default=QUANTILE, help=f"default {QUANTILE}")
    parser.add_argument("--min-positives", type=int, default=MIN_POSITIVES, help=f"default {MIN_POSITIVES}")
    parser.add_argument("--img-size", type=int, help="network input size (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if not 0.0 <= args.quantile <= 1.0 or args.min_positives < 1 or not 1 <= args.batch_size <= 1024:
        parser.error("--quantile must be in [0, 1], --min-positives ≥ 1, --batch-size from 1 to 1024")
    if args.img_size is not None and not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE:
        parser.error(f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Compute the thresholds and write ``--out``; a problem is one ``error:`` line and exit status 2."""
    args = parse_args(argv)
    try:
        model, meta = load_model(args.checkpoint)
        index = CocoIndex(args.ann, args.images)
        if list(index.category_ids) != list(meta.get("category_ids", [])):
            raise DataError(f"--ann {args.ann.name}: its categories are not the model's classes ({meta['num_classes']} "
                            "classes by category id); calibrate on the data the model was trained for")
        probs, present = calibration_probabilities(model, meta, index, args.batch_size, args.device, args.img_size)
        meta["class_thresholds"] = class_thresholds(probs, present, args.quantile, FLOOR, args.min_positives)
        meta["calibration"] = {"images": len(probs), "ann": args.ann.name, "img_size": args.img_size or
                               meta["input_size"], "quantile": args.quantile,
                               "min_positives": args.min_positives, "floor": FLOOR}
        if not meta.get(META_KEY):  # a checkpoint camloc writes carries its weights' map geometry
            meta[META_KEY] = geometry_entries(model, view_sizes(meta["input_size"]))
        save_checkpoint(model.cpu(), meta, args.out)
    except (ModelError, DataError, OutputError, OSError) as exc:
        say(error_line(exc, (ModelError, DataError, OutputError, OSError)))
        return 2
    raised = sum(t > FLOOR for t in meta["class_thresholds"])
    print(f"wrote {args.out}: thresholds for {raised} of {meta['num_classes']} classes above the floor {FLOOR} "
          f"(from {len(probs)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
