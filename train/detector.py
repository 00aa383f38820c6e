"""``python -m train --detector ARCH``: a detection network trained on boxes — camloc's pseudo-labels
(``python -m camloc.pseudo``) or true ones — with the classifier loop's habits: progress bar, ``last.pt`` /
``best.pt`` / ``log.jsonl`` written atomically, ``--resume`` to the same weights, torchrun (DDP), AMP on a GPU,
``--profile``, validation COCO AP per epoch with camloc's evaluator. ``--rounds N``: each trained detector re-labels
the training images (the image-level labels of ``--ann``, a detector's default filter) and the next
detector, started afresh, trains on those (``OUT/round2``, ``OUT/round3``, …).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
from copy import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from camloc.detector import Detector, build_detector, detector_payload, load_detector
from camloc.detector.data import DetectionSamples, collate_detection
from camloc.evaluation import Detections, ImageLabels, coco_evaluate
from camloc.io.atomic import atomic_write_json
from camloc.io.data import CocoIndex, DataError, Unreadable
from camloc.io.reader import read_split
from camloc.models import ModelError
from camloc.models import atomic_torch_save as save
from camloc.pseudo import DEFAULT_RULES, pseudo_labels
from camloc.runtime.distributed import Dist
from camloc.runtime.errors import say
from camloc.runtime.profiling import StageClock, stage
from train.fingerprint import fingerprint
from train.loop import (
    SYNC_EVERY,
    SteadyRate,
    amp_dtype,
    check_finite,
    make_loader,
    optimizer_step,
    param_groups,
    warmup_cosine,
    warmup_steps,
)
from train.state import TrainingError, log_epoch, restore_training, warn_unreadable

#: Classifier-only options refused with ``--detector`` (option, value that means "not given").
CLASSIFIER_ONLY = (("--arch", "arch", None), ("--mode crops", "mode", "multilabel"), ("--dilate", "dilate", False),
                   ("--val-limit", "val_limit", 0))


def refused_options(args: argparse.Namespace) -> list[str]:
    """The classifier-only options given with ``--detector`` (the backbone is in the detector's name)."""
    return [name for name, key, unset in CLASSIFIER_ONLY if getattr(args, key) != unset]


def load_indexes(args: argparse.Namespace) -> tuple[CocoIndex, CocoIndex | None]:
    """The training boxes (and validation ground truth), checked once; an empty file is one clear line."""
    index = CocoIndex(args.ann, args.images)
    if not index.images:
        raise DataError(f"{args.ann} lists no images: nothing to train a detector on (is it the pseudo-label file "
                        "python -m camloc.pseudo wrote?)")
    if not len(index.truth.ann_id):
        raise DataError(f"{args.ann} has no boxes at all: a detector needs some (pseudo-labels of a split where no "
                        "class got a box? check the recipe and the filter of python -m camloc.pseudo)")
    val = CocoIndex(args.val_ann, args.val_images) if args.val_ann else None
    if val is not None and val.category_ids != index.category_ids:
        raise DataError("--val-ann has other categories than --ann")
    return index, val


def initial_detector(args: argparse.Namespace, index: CocoIndex) -> tuple[nn.Module, dict[str, Any]]:
    weights = None if args.weights == "none" else args.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise TrainingError(f"--weights {weights}: no such file (use imagenet, none or a classifier checkpoint)")
    model, meta = build_detector(args.detector, index.class_names, index.category_ids, weights, args.img_size)
    meta["training"] = {k: str(v) for k, v in vars(args).items()}
    if args.freeze_backbone:
        model.backbone.body.requires_grad_(False)
    return model, meta


def validate(model: nn.Module, meta: dict[str, Any], index: CocoIndex, args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    """COCO AP, AP50 and AR100 of the detector on the validation split (camloc's evaluator); unreadable images
    are left out and listed."""
    detector = Detector(model, meta, device=device, precision="auto")
    names = {im["id"]: im["file_name"] for im in index.images}
    found, readable_ids, unreadable = [], [], []
    for readable, failed in read_split(index.images_dir, index.images, args.batch_size, device, args.workers):
        unreadable += [names[i] for i, _ in failed]
        if readable:
            ids = [i for i, _ in readable]
            readable_ids += ids
            found.append(detector.detect([p for _, p in readable], ids))
    stats = coco_evaluate(index.truth, Detections.concatenate(found), readable_ids)["stats"] if readable_ids \
        else [None] * 12
    return {"val_ap": stats[0], "val_ap50": stats[1], "val_ar100": stats[8], "val_unreadable_images": unreadable}


def train_epoch(net: nn.Module, model: nn.Module, loader, optimizer, scheduler, scaler, args: argparse.Namespace,
                node: Dist, epoch: int) -> dict[str, Any]:
    """One pass over the training images: the sum of the network's losses, each loss's mean, images/s.

    As the classifier's loop: the host reads the device every :data:`~train.loop.SYNC_EVERY` steps only (the
    bar's loss, the NaN check: a non-finite loss stops the run, the last good checkpoint kept); unreadable
    images are left out of their batch and listed; under DDP the losses are summed over the processes."""
    model.train()
    if args.freeze_backbone:
        model.backbone.body.eval()
    amp = node.device.type == "cuda"
    totals: dict[str, torch.Tensor] = {}
    nonfinite = torch.zeros((), dtype=torch.bool, device=node.device)
    count, unreadable, start = 0, [], time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=not node.main,
               file=sys.stderr)
    steady = SteadyRate(node.device, warmup_steps(len(loader)))
    batches = iter(loader)
    for step in itertools.count(1):
        with stage("wait for data"):
            item = next(batches, None)
        if item is None:
            break
        batch, skipped = item
        bar.update()
        unreadable += skipped
        if batch is None:
            continue
        with stage("to device"):
            images = [im.to(node.device, non_blocking=True).float().div_(255) for im in batch[0]]
            targets = [{k: v.to(node.device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
        with stage("forward"), torch.autocast(node.device.type, dtype=amp_dtype(node.device), enabled=amp):
            losses = net(images, targets)
        loss = sum(v.float() for v in losses.values())
        nonfinite |= ~torch.isfinite(loss.detach())
        optimizer_step(loss, optimizer, scaler, scheduler)
        for name, value in {"train_loss": loss, **losses}.items():
            totals[name] = totals.get(name, torch.zeros((), dtype=torch.float64, device=node.device)) \
                + value.detach().double() * len(images)
        count += len(images)
        steady.step(step, len(images))
        if step % SYNC_EVERY == 0:
            check_finite(nonfinite, node, epoch, args)
            bar.set_postfix(loss=f"{totals['train_loss'].item() / count:.4f}",
                            img_s=f"{count * node.world / (time.perf_counter() - start):.1f}")
    bar.close()
    check_finite(nonfinite, node, epoch, args)
    names = sorted(totals)
    stats = torch.stack([*(totals[n] for n in names), torch.tensor(float(count), dtype=torch.float64,
                                                                   device=node.device)])
    if node.world > 1:
        dist.all_reduce(stats)
        everyone: list[list[Unreadable]] = [[] for _ in range(node.world)]
        dist.all_gather_object(everyone, unreadable)
        unreadable = [u for part in everyone for u in part]
    total = stats[-1].item()
    if total == 0:
        first = f" ({unreadable[0].reason})" if unreadable else ""
        raise TrainingError(f"none of the {len(loader.dataset)} training images could be read{first}; check the "
                            "image folder")
    elapsed = time.perf_counter() - start
    return {**{n: stats[i].item() / total for i, n in enumerate(names)}, "images_per_s": total / elapsed,
            "steady_images_per_s": steady.rate(node.world), "images": int(total), "skipped_images": len(unreadable),
            "unreadable_images": sorted({u.file_name for u in unreadable}),
            "lr": optimizer.param_groups[-1]["lr"]}


def resume(last: Path, model: nn.Module, meta: dict[str, Any], optimizer, scheduler, scaler,
           settings: dict[str, str], anyway: bool = False):
    """Continue from ``last``: a detector of the same architecture and classes, its training state intact and of
    the same ``settings`` (:mod:`train.fingerprint`; unless ``anyway``)."""
    try:
        saved, saved_meta, extras = load_detector(last)
    except ModelError as exc:
        raise TrainingError(f"--resume: {exc}") from None
    if saved_meta["arch"] != meta["arch"] or saved_meta["class_names"] != meta["class_names"]:
        raise TrainingError(f"--resume: {last} holds a {saved_meta['arch']} with {saved_meta['num_classes']} "
                            f"classes, not this run's {meta['arch']} with {meta['num_classes']}; use another --out")
    return restore_training(last, extras.get("train_state"), lambda: model.load_state_dict(saved.state_dict()),
                            optimizer, scheduler, scaler, settings, anyway)


def train_round(args: argparse.Namespace, node: Dist) -> dict[str, Any]:
    """One detector trained on ``--ann``'s boxes into ``--out``."""
    torch.manual_seed(args.seed)
    index, val_index = load_indexes(args)
    model, meta = initial_detector(args, index)
    settings = fingerprint(args, index, val_index, node.world, node.device)
    samples = DetectionSamples(index, train=True, limit=args.limit)
    model.to(node.device)
    groups = param_groups(model, args, backbone=model.backbone.body)
    optimizer = (torch.optim.AdamW(groups) if args.optimizer == "adamw"
                 else torch.optim.SGD(groups, momentum=0.9, nesterov=True))
    steps = math.ceil(len(samples) / (args.batch_size * node.world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps * args.epochs, round(steps * args.warmup_epochs)))
    scaler = torch.amp.GradScaler(enabled=node.device.type == "cuda" and amp_dtype(node.device) == torch.float16)
    start_epoch, best, history = 0, -1.0, []
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        start_epoch, best, history = resume(last, model, meta, optimizer, scheduler, scaler, settings,
                                            args.resume_anyway)
    elif args.resume and node.main:
        say(f"note: no {last} to resume from; starting a new run")
    net = DistributedDataParallel(model) if node.world > 1 else model
    if node.main:
        arithmetic = "bf16/fp16 autocast" if node.device.type == "cuda" else "float32"
        say(f"train: {len(samples)} images on {node.device}{f' × {node.world} processes' if node.world > 1 else ''}"
            f", batch {args.batch_size} per process, {args.workers} loader workers per process, detector "
            f"{args.detector} at {args.img_size} px, {arithmetic}")
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)
        clock = StageClock(node.device) if args.profile else None
        started = time.perf_counter()
        with clock.active() if clock else contextlib.nullcontext():
            loader = make_loader(samples, args, node, epoch, True, collate=collate_detection)
            record = {"epoch": epoch + 1, **train_epoch(net, model, loader, optimizer, scheduler, scaler, args, node,
                                                        epoch)}
            if node.main:
                if val_index is not None:
                    with stage("validation"):
                        record.update(validate(model, meta, val_index, args, node.device))
                score = record.get("val_ap")
                improved = score is not None and score > best
                best = max(best, score) if score is not None else best
                train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "scaler": scaler.state_dict(), "epoch": epoch + 1, "best": best,
                               "history": [json.dumps(h) for h in [*history, record]], "fingerprint": settings}
                with stage("checkpoints"):
                    save(detector_payload(model, meta, train_state=train_state), last)
                    if improved or val_index is None:
                        save(detector_payload(model, meta, epoch=epoch + 1, val_ap=score), args.out / "best.pt")
        if node.main:
            log_epoch(record, time.perf_counter() - started, clock, history, args.out / "log.jsonl")
        node.barrier()
    if node.main:
        warn_unreadable(history)
    return {"history": history, "best": best}


def relabel(args: argparse.Namespace, node: Dist, source: Path, out: Path, number: int) -> Path:
    """Round ``number``'s pseudo-labels, ``out``: the previous round's detector (its ``best.pt``, ``source``) boxes
    each training image's labelled classes (the image-level labels of ``--ann``), kept by a detector's default
    filter (:data:`~camloc.pseudo.DEFAULT_RULES`)."""
    if node.main and not (args.resume and out.is_file()):
        detector = Detector.from_checkpoint(source, device=node.device)
        document = pseudo_labels(detector, args.images, ImageLabels(args.ann), DEFAULT_RULES["detector"],
                                 args.batch_size, args.workers, args.limit,
                                 {"description": f"camloc pseudo-labels, round {number}: boxes of round "
                                                 f"{number - 1}'s detector",
                                  "source": {"kind": "detector", "checkpoint": str(source)}})
        atomic_write_json(out, document)
    node.barrier()
    return out


def run_detector(args: argparse.Namespace, node: Dist) -> dict[str, Any]:
    """``--rounds`` rounds of detector training: round 1 on ``--ann``'s boxes in ``OUT``, round ``k ≥ 2`` on
    round ``k − 1``'s pseudo-labels in ``OUT/round{k}`` (started afresh, the same settings)."""
    result = {"round1": train_round(args, node)}
    previous = args.out
    for number in range(2, args.rounds + 1):
        this = copy(args)
        this.out = args.out / f"round{number}"
        this.ann = relabel(args, node, previous / "best.pt", this.out / "pseudo.json", number)
        result[f"round{number}"] = train_round(this, node)
        previous = this.out
    return result if args.rounds > 1 else result["round1"]
