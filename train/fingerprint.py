"""What a training run's result depends on, kept in ``last.pt`` so that ``--resume`` continues only the same run.

A run resumed with another ``--lr``, ``--limit``, ``--img-size``, ``--mode``, seed, batch size, data or
precision would silently become a mix of two runs (and its metadata would describe only the second). So every
setting that changes the weights or the choice of ``best.pt`` is fingerprinted: the options (but ``--out``,
``--resume*``, ``--debug``, ``--profile`` and the device's index), the annotation files by content, the image
folders by the name, size and modification time of every image used, the number of processes and the device's
arithmetic.

``--resume`` refuses a checkpoint of other settings with one line naming them, unless ``--resume-anyway`` says
the change is meant; a few settings change what the saved optimizer state *is* (the architecture, a frozen
backbone, the optimizer), so they can never be continued: a new run starts from the weights instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from camloc.io.data import CocoIndex
from camloc.io.digest import file_digest, stamps_digest

#: Options that do not change the result (where outputs go, how the run was started, how errors show).
UNRELATED = ("out", "resume", "resume_anyway", "debug", "device", "profile")
#: Settings whose change makes the saved optimizer state meaningless for the new run.
STRUCTURAL = ("arch", "dilate", "freeze_backbone", "optimizer")
#: How each fingerprint entry is named in a message (an option's flag otherwise).
LABELS = {"ann_content": "--ann (content)", "images_content": "--images (files)", "val_ann_content":
          "--val-ann (content)", "val_images_content": "--val-images (files)", "weights_content": "--weights (content)",
          "processes": "number of processes", "precision": "device arithmetic"}


def precision_of(device: torch.device) -> str:
    """The arithmetic training runs in on ``device`` (see :func:`train.loop.amp_dtype`)."""
    if device.type != "cuda":
        return f"{device.type} fp32"
    return "cuda bf16" if torch.cuda.is_bf16_supported() else "cuda fp16 + scaler"


def fingerprint(args: argparse.Namespace, train_index: CocoIndex, val_index: CocoIndex | None, world: int,
                device: torch.device) -> dict[str, str]:
    """Every setting the run's result depends on, as strings (see the module docstring)."""
    found = {key: str(value) for key, value in sorted(vars(args).items()) if key not in UNRELATED}
    used = [im["file_name"] for im in train_index.images[: args.limit]]
    found.update(ann_content=file_digest(args.ann), images_content=stamps_digest(args.images, used),
                 processes=str(world), precision=precision_of(device))
    if val_index is not None:
        found.update(val_ann_content=file_digest(args.val_ann),
                     val_images_content=stamps_digest(args.val_images, [im["file_name"] for im in val_index.images]))
    if args.weights not in ("imagenet", "none"):
        found["weights_content"] = file_digest(args.weights)
    return found


def label(key: str) -> str:
    return LABELS.get(key, "--" + key.replace("_", "-"))


def differences(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """The fingerprint entries that differ, in order."""
    return [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def describe(keys: list[str], saved: dict[str, str], current: dict[str, str]) -> str:
    """``--lr 0.001 → 0.01, --ann (content)``: each changed setting, with its values when they are short."""
    parts = []
    for key in keys:
        before, after = saved.get(key, "unset"), current.get(key, "unset")
        short = key not in LABELS or key in ("processes", "precision")
        parts.append(f"{label(key)} {before} → {after}" if short and len(before) + len(after) < 60 else label(key))
    return ", ".join(parts)


def resume_refusal(saved: Any, current: dict[str, str], last: Path, anyway: bool) -> str | None:
    """Why ``last`` (its saved fingerprint) cannot continue this run, or ``None``: a structural change always, any
    other change unless ``anyway``; a checkpoint without a fingerprint (an older camloc) unless ``anyway``."""
    if not isinstance(saved, dict):
        return None if anyway else (f"--resume: {last} records no settings to check (an older camloc wrote it); add "
                                    "--resume-anyway to continue it with this command's settings")
    changed = differences(saved, current)
    structural = [key for key in changed if key in STRUCTURAL]
    if structural:
        what = ("trained the head only (--freeze-backbone), so fine-tuning the whole network from it"
                if structural == ["freeze_backbone"] and saved.get("freeze_backbone") == "True" else
                "trained the whole network, so training the head only from it"
                if structural == ["freeze_backbone"] else
                f"was trained with {describe(structural, saved, current)}: continuing it so")
        return (f"--resume: {last} {what} is a new run, not a continuation (its optimizer state does not carry "
                f"over); start it with --weights {last} and another --out, without --resume")
    if changed and not anyway:
        return (f"--resume: {last} was trained with other settings ({describe(changed, saved, current)}); resume "
                "with the same options, add --resume-anyway to continue with the new ones, or use another --out")
    return None
