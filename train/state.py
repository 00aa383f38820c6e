"""A training run's state on disk: ``last.pt``'s training state (resume), ``log.jsonl``, calibration of
``best.pt`` and the map geometry of both checkpoints at the end, and the one-line error type of training."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from camloc.calibration import FLOOR, MIN_POSITIVES, QUANTILE, calibration_probabilities, class_thresholds
from camloc.io.atomic import atomic_output
from camloc.io.data import (
    CocoIndex,
)
from camloc.models import (
    CamModel,
    ModelError,
    checkpoint_payload,
    load_checkpoint,
)
from camloc.models import atomic_torch_save as save
from camloc.models.geometry import META_KEY, geometry_entries
from camloc.pipeline.analysis import view_sizes
from camloc.runtime.distributed import Dist
from camloc.runtime.errors import say
from camloc.runtime.profiling import StageClock, format_report
from train.fingerprint import resume_refusal


class TrainingError(Exception):
    """A problem that stops training; printed as one line."""


def calibrate(checkpoint: Path, index: CocoIndex, args: argparse.Namespace, node: Dist) -> None:
    """Write the per-class gating thresholds (:mod:`camloc.calibration`) of the training images into
    ``checkpoint``'s meta, so that the ``calibrated`` gate of every recipe can use them."""
    model, meta, extras = load_checkpoint(checkpoint, node.device)
    probs, present = calibration_probabilities(model, meta, index, args.batch_size, node.device, limit=args.limit)
    meta["class_thresholds"] = class_thresholds(probs, present)
    meta["calibration"] = {"images": len(probs), "ann": args.ann.name, "img_size": meta["input_size"],
                           "quantile": QUANTILE, "min_positives": MIN_POSITIVES, "floor": FLOOR}
    save(checkpoint_payload(model, meta, **extras), checkpoint)


def store_geometry(checkpoints: list[Path], node: Dist) -> None:
    """Write the trained weights' map geometry (:func:`camloc.models.geometry.geometry_entries`, measured at every input
    size a Localizer runs the model at) into each checkpoint's meta, so that ``align="measured"`` needs no measuring.
    Checkpoints that hold the same weights (``best.pt`` is often the last epoch's) are measured once."""
    measured: list[tuple[dict[str, torch.Tensor], list[dict[str, Any]]]] = []
    for checkpoint in checkpoints:
        model, meta, extras = load_checkpoint(checkpoint, node.device)
        weights = model.state_dict()
        entries = next((e for w, e in measured if w.keys() == weights.keys()
                        and all(torch.equal(w[k], weights[k]) for k in weights)), None)
        if entries is None:
            entries = geometry_entries(model, view_sizes(meta["input_size"]))
            measured.append((weights, entries))
        meta[META_KEY] = entries
        save(checkpoint_payload(model, meta, **extras), checkpoint)


def log_epoch(record: dict[str, Any], seconds: float, clock: StageClock | None, history: list[dict[str, Any]],
              log: Path) -> None:
    """The end of an epoch on the main process (the classifier's and the detector's loops alike): its images per
    second over ``seconds`` (and ``clock``'s profile, printed), ``record`` appended to ``history`` and ``log``
    rewritten, and one line of its figures."""
    record["epoch_images_per_s"] = record["images"] / seconds
    if clock:
        record["profile"] = clock.report(record["images"], seconds)
        say(format_report(record["profile"]))
    history.append(record)
    write_log(log, history)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                   if not isinstance(v, (list, dict))), flush=True)


def warn_unreadable(history: list[dict[str, Any]]) -> None:
    """One warning line at the end of a run that skipped images (each epoch's list is in log.jsonl)."""
    train = sorted({name for record in history for name in record.get("unreadable_images", [])})
    val = sorted({name for record in history for name in record.get("val_unreadable_images", [])})
    if train or val:
        first = (train or val)[0]
        say(f"warning: {len(train)} training and {len(val)} validation images could not be read and were "
            f"skipped (listed in log.jsonl; first: {first})")


def _finite(obj: Any) -> bool:
    """No NaN or infinity in a (nested) optimizer/scheduler state."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def resume(last: Path, model: CamModel, meta: dict[str, Any], optimizer, scheduler, scaler,
           settings: dict[str, str], anyway: bool = False) -> tuple[int, float, list[dict[str, Any]]]:
    """Restore weights, optimizer, scheduler and scaler from ``last``; returns ``(epochs done, best
    validation mAP, history)``. A damaged file, one from another run, or one trained with other ``settings``
    (:mod:`train.fingerprint`; unless ``anyway``: then the run continues with this run's learning rates and
    weight decay) is a :class:`TrainingError`."""
    try:
        saved, saved_meta, extras = load_checkpoint(last)
    except ModelError as exc:
        raise TrainingError(f"--resume: {exc}") from None
    if saved_meta["arch"] != meta["arch"] or saved_meta["class_names"] != meta["class_names"]:
        raise TrainingError(f"--resume: {last} holds a {saved_meta['arch']} with {saved_meta['num_classes']} "
                            f"classes, not this run's {meta['arch']} with {meta['num_classes']}; use another --out")
    return restore_training(last, extras.get("train_state"), lambda: model.net.load_state_dict(saved.net.state_dict()),
                            optimizer, scheduler, scaler, settings, anyway)


def restore_training(last: Path, state: Any, load_weights: Callable[[], Any], optimizer, scheduler, scaler,
                     settings: dict[str, str], anyway: bool = False) -> tuple[int, float, list[dict[str, Any]]]:
    """``last.pt``'s training state (epochs done, best score, history, optimizer, scheduler, scaler) checked against
    this run's ``settings`` (:mod:`train.fingerprint`; unless ``anyway``) and restored, the saved weights put back by
    ``load_weights``; anything malformed is a :class:`TrainingError`."""
    if isinstance(state, dict):
        refusal = resume_refusal(state.get("fingerprint"), settings, last, anyway)
        if refusal:
            raise TrainingError(refusal)
    fresh = [(group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups]
    try:
        epoch, best = state["epoch"], state["best"]
        history = [json.loads(line) for line in state["history"]]
        if (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or isinstance(best, bool)
                or not isinstance(best, (int, float)) or not math.isfinite(best)
                or not all(isinstance(h, dict) for h in history)):
            raise ValueError(f"epoch {epoch!r}, best {best!r} or the history is invalid")
        if not _finite([state["optimizer"], state["scheduler"], state["scaler"]]):
            raise ValueError("the optimizer state holds NaN or inf")
        load_weights()
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if anyway:
            keep_hyperparameters(optimizer, scheduler, fresh)
    except (TypeError, KeyError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise TrainingError(f"--resume: {last} has a damaged training state ({exc.__class__.__name__}: {detail}); "
                            "delete it to start over, or use another --out") from None
    return epoch, float(best), history


def keep_hyperparameters(optimizer, scheduler, fresh: list[tuple[float, float]]) -> None:
    """After loading a saved optimizer and scheduler: this run's base learning rate and weight decay of each
    parameter group (``fresh``), the learning rate of the next step from this run's schedule
    (``--resume-anyway``: the new settings take effect instead of being silently replaced by the saved ones)."""
    if len(fresh) != len(optimizer.param_groups):
        raise ValueError(f"{len(optimizer.param_groups)} saved parameter groups, {len(fresh)} in this run")
    scheduler.base_lrs = [lr for lr, _ in fresh]
    for group, (lr, decay), factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas):
        group.update(initial_lr=lr, weight_decay=decay, lr=lr * factor(scheduler.last_epoch))


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch records as JSON lines, replaced atomically."""
    with atomic_output(path) as handle:
        handle.write("".join(json.dumps(h) + "\n" for h in history))

