"""``python -m train``: fine-tune a GAP classifier on COCO image-level labels, or train a detector on boxes.

The classifier learns from image-level labels (or box crops); ``--detector`` trains a detector on boxes —
camloc's pseudo-labels or true ones (:mod:`train.detector`).

Runs alone or under ``torchrun --nproc_per_node=N`` (DDP: NCCL on GPUs, gloo on CPU) with the
same code; only rank 0 writes. Every epoch writes ``OUT/last.pt`` (model + optimizer, scheduler,
scaler state) and, when validation mAP improves, ``OUT/best.pt``, atomically; ``OUT/log.jsonl``
gets one line per epoch. Randomness is re-seeded from ``(--seed, epoch)`` at every epoch, so a
run killed at any moment and continued with ``--resume`` ends with the same weights as an
uninterrupted one. At the end both checkpoints get the final weights' measured map geometry
(:func:`camloc.models.geometry.geometry_entries`, what ``align="measured"`` reads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from camloc.detector import DEFAULT_DETECTOR, parse_name
from camloc.evaluation import EvaluationError
from camloc.io.atomic import OutputError, writable_folder
from camloc.io.data import (
    CocoCrops,
    CocoIndex,
    CocoMultiLabel,
    DataError,
    eval_transform,
    train_transform,
)
from camloc.io.lock import exclusive_folder
from camloc.models import (
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    CamModel,
    ModelError,
    build_model,
    checkpoint_payload,
)
from camloc.models import atomic_torch_save as save
from camloc.pseudo import PseudoLabelError
from camloc.runtime.devices import GPU_BATCH, MAX_GPU_LOADERS, loader_defaults, resolve_device
from camloc.runtime.distributed import Dist, setup_distributed
from camloc.runtime.errors import error_line, one_line_warnings, say
from camloc.runtime.profiling import StageClock, stage
from train.detector import refused_options, run_detector
from train.fingerprint import fingerprint
from train.loop import amp_dtype, make_loader, param_groups, train_epoch, validate, warmup_cosine
from train.state import TrainingError, calibrate, log_epoch, resume, store_geometry, warn_unreadable

#: Guards against values that would exhaust the machine (one process per worker, one tensor per batch).
MAX_BATCH, MAX_WORKERS = 1024, 64
#: Batch size and loader processes on a CPU.
CPU_BATCH, CPU_WORKERS = 32, 4
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, type=Path, help="training image folder (e.g. train2017)")
    p.add_argument("--ann", required=True, type=Path, help="training instances JSON")
    p.add_argument("--val-images", type=Path, help="validation image folder (e.g. val2017)")
    p.add_argument("--val-ann", type=Path, help="validation instances JSON")
    p.add_argument("--out", required=True, type=Path, help="output folder for last.pt, best.pt, log.jsonl")
    p.add_argument("--arch", help="torchvision classifier (default resnet50; mobilenet_v2, ...)")
    p.add_argument("--detector", metavar="ARCH",
                   help=f"train a detector instead (e.g. {DEFAULT_DETECTOR}, fcos_resnet50_fpn) on --ann's boxes "
                        "(python -m camloc.pseudo's pseudo-labels, or true boxes)")
    p.add_argument("--rounds", type=int, default=1,
                   help="--detector: N ≥ 2 = each trained detector re-labels the training images and the next one "
                        "trains on those (OUT/round2, OUT/round3, …)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet | PATH (checkpoint / state_dict+json; a detector takes a classifier's backbone "
                        "of its own arch) | none")
    p.add_argument("--mode", default="multilabel", choices=["multilabel", "crops"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int,
                   help=f"per process (default: {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU)")
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (backbone: × --backbone-lr-scale)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=448)
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train the linear head only (a detector: the pyramid and heads, not its backbone)")
    p.add_argument("--dilate", action="store_true",
                   help="dilate the last stage (output stride 16: finer maps; resnet*, mobilenet_v3*)")
    p.add_argument("--workers", type=int,
                   help=f"loader processes per training process (default: on a GPU min(cores − 2, {MAX_GPU_LOADERS}) "
                        f"shared by the machine's processes, on a CPU {CPU_WORKERS})")
    p.add_argument("--profile", action="store_true",
                   help="seconds per stage (data, to device, forward, backward, step, validation, checkpoint) and the "
                        "stage that bounds training, printed and kept in log.jsonl")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (refused if any setting that changes the result differs)")
    p.add_argument("--resume-anyway", action="store_true",
                   help="--resume even where settings differ (e.g. more --epochs, another --lr): the run continues "
                        "with this command's settings")
    p.add_argument("--limit", type=int, help="use only the first N training images (smoke tests)")
    p.add_argument("--val-limit", type=int, default=0,
                   help="also measure localisation AP50 of CAM boxes on the first N validation images")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the per-class gating thresholds computed on the training images at the end")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    args.resume = args.resume or args.resume_anyway
    problems = [message for bad, message in [
        (args.epochs < 1, "--epochs must be ≥ 1"),
        (args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH,
         f"--batch-size must be from 1 to {MAX_BATCH}"),
        (not (math.isfinite(args.lr) and args.lr > 0), "--lr must be a finite number > 0"),
        (not (math.isfinite(args.backbone_lr_scale) and args.backbone_lr_scale >= 0),
         "--backbone-lr-scale must be a finite number ≥ 0"),
        (not (math.isfinite(args.weight_decay) and args.weight_decay >= 0),
         "--weight-decay must be a finite number ≥ 0"),
        (not (math.isfinite(args.warmup_epochs) and args.warmup_epochs >= 0),
         "--warmup-epochs must be a finite number ≥ 0"),
        (not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE,
         f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"),
        (args.workers is not None and not 0 <= args.workers <= MAX_WORKERS,
         f"--workers must be from 0 to {MAX_WORKERS}"),
        (args.limit is not None and args.limit < 1, "--limit must be ≥ 1"),
        (args.val_limit < 0, "--val-limit must be ≥ 0"),
        (not 0 <= args.seed < 2**32, "--seed must be from 0 to 2**32 - 1"),
        ((args.val_images is None) != (args.val_ann is None), "--val-images and --val-ann go together"),
    ] if bad]
    if args.detector:
        problems += [f"{option} is a classifier option; a detector's backbone is in its name"
                     for option in refused_options(args)]
        try:
            parse_name(args.detector)
        except ModelError as exc:
            problems.append(f"--detector: {exc}")
    elif args.rounds != 1:
        problems.append("--rounds goes with --detector")
    if args.rounds < 1:
        problems.append(f"--rounds must be at least 1 (got {args.rounds})")
    args.arch = args.arch or (None if args.detector else "resnet50")
    if problems:
        p.error("; ".join(problems))
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    args.device = str(device)
    args.batch_size, args.workers = loader_defaults(device, args.batch_size, args.workers, CPU_BATCH, CPU_WORKERS,
                                                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return args


def load_indexes(args: argparse.Namespace) -> tuple[CocoIndex, CocoIndex | None]:
    """Parse and check the training (and validation) annotations once, before building the model."""
    train_index = CocoIndex(args.ann, args.images)
    val_index = CocoIndex(args.val_ann, args.val_images) if args.val_ann else None
    if val_index and val_index.category_ids != train_index.category_ids:
        raise DataError("--val-ann has other categories than --ann")
    return train_index, val_index


def build_datasets(args: argparse.Namespace, train_index: CocoIndex, val_index: CocoIndex | None):
    kind = CocoMultiLabel if args.mode == "multilabel" else CocoCrops
    train_set = kind(train_index, train_transform(args.img_size), args.limit)
    val_set = kind(val_index, eval_transform(args.img_size)) if val_index else None
    if len(train_set) == 0:
        raise DataError(f"{args.ann} gives no training samples")
    return train_set, val_set


def initial_model(args: argparse.Namespace, index: CocoIndex) -> tuple[CamModel, dict[str, Any]]:
    weights = None if args.weights == "none" else args.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise TrainingError(f"--weights {weights}: no such file (use imagenet, none or a checkpoint path)")
    model, meta = build_model(args.arch, index.class_names, weights=weights, input_size=args.img_size,
                              activation="sigmoid" if args.mode == "multilabel" else "softmax", dilate=args.dilate)
    meta["category_ids"] = list(index.category_ids)
    meta["training"] = {k: str(v) for k, v in vars(args).items()}
    if args.freeze_backbone:
        for param in model.parameters():
            param.requires_grad_(False)
        for param in model.head.parameters():
            param.requires_grad_(True)
    return model, meta


def run(args: argparse.Namespace, node: Dist) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    train_index, val_index = load_indexes(args)
    settings = fingerprint(args, train_index, val_index, node.world, node.device)
    model, meta = initial_model(args, train_index)
    train_set, val_set = build_datasets(args, train_index, val_index)
    model.to(node.device)
    if node.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = (torch.optim.AdamW(param_groups(model, args)) if args.optimizer == "adamw"
                 else torch.optim.SGD(param_groups(model, args), momentum=0.9, nesterov=True))
    steps = math.ceil(len(train_set) / (args.batch_size * node.world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps * args.epochs, round(steps * args.warmup_epochs)))
    use_scaler = node.device.type == "cuda" and amp_dtype(node.device) == torch.float16
    scaler = torch.amp.GradScaler(enabled=use_scaler)
    start_epoch, best, history = 0, -1.0, []
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        start_epoch, best, history = resume(last, model, meta, optimizer, scheduler, scaler, settings,
                                            args.resume_anyway)
    elif args.resume and node.main:
        say(f"note: no {last} to resume from; starting a new run")
    net = DistributedDataParallel(model) if node.world > 1 else model
    if node.main:
        say(f"train: {len(train_set)} samples on {node.device}"
            f"{f' × {node.world} processes' if node.world > 1 else ''}, batch {args.batch_size} per process, "
            f"{args.workers} loader workers per process, {args.arch} at {args.img_size} px, "
            f"{'bf16/fp16 autocast' if node.device.type == 'cuda' else 'float32'}")
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)
        clock = StageClock(node.device) if args.profile else None
        started = time.perf_counter()
        with clock.active() if clock else contextlib.nullcontext():
            record = {"epoch": epoch + 1, **train_epoch(net, model, meta,
                                                       make_loader(train_set, args, node, epoch, True), optimizer,
                                                       scheduler, scaler, args, node, epoch)}
            if node.main:
                if val_set is not None:
                    with stage("validation"):
                        record.update(validate(model, meta, val_set, val_index, args, node))
                score = record.get("val_map")
                improved = score is not None and score > best
                best = max(best, score) if score is not None else best
                train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "scaler": scaler.state_dict(), "epoch": epoch + 1, "best": best,
                               "history": [json.dumps(h) for h in [*history, record]], "fingerprint": settings}
                with stage("checkpoints"):
                    save(checkpoint_payload(model, meta, train_state=train_state), last)
                    if improved or val_set is None:
                        save(checkpoint_payload(model, meta, epoch=epoch + 1, val_map=score), args.out / "best.pt")
        if node.main:
            log_epoch(record, time.perf_counter() - started, clock, history, args.out / "log.jsonl")
        node.barrier()
    if node.main:
        warn_unreadable(history)
        # the final weights' geometry: align="measured" reads it
        store_geometry([c for c in (args.out / "best.pt", last) if c.is_file()], node)
        if not args.no_calibrate:
            calibrate(args.out / "best.pt", train_index, args, node)
    return {"history": history, "best": best}


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m train``; a problem ends it with exit status 2 and one ``error:`` line."""
    args = parse_args(argv)
    try:
        node = setup_distributed(args.device)
        if node.main:
            writable_folder(args.out)
        with exclusive_folder(args.out, take=node.main, agree=node.from_main), one_line_warnings():
            (run_detector if args.detector else run)(args, node)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            say(f"\ninterrupted; continue with the same command plus --resume ({args.out / 'last.pt'})")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        say(error_line(exc, (TrainingError, DataError, ModelError, EvaluationError, OutputError, OSError,
                             PseudoLabelError)))
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # also when setup_distributed itself failed half-way
    return 0
