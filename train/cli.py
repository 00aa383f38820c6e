"""``python -m train``: fine-tune a GAP classifier on COCO image-level labels (or box crops).

Runs alone or under ``torchrun --nproc_per_node=N`` (DDP: NCCL on GPUs, gloo on CPU) with the
same code; only rank 0 writes. Every epoch writes ``OUT/last.pt`` (model + optimizer, scheduler,
scaler state) and, when validation mAP improves, ``OUT/best.pt``, atomically; ``OUT/log.jsonl``
gets one line per epoch. Randomness is re-seeded from ``(--seed, epoch)`` at every epoch, so a
run killed at any moment and continued with ``--resume`` ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from camloc.calibration import FLOOR, MIN_POSITIVES, QUANTILE, calibration_probabilities, class_thresholds
from camloc.data import (
    CocoCrops,
    CocoIndex,
    CocoMultiLabel,
    DataError,
    Unreadable,
    collate_skipping,
    eval_transform,
    train_transform,
)
from camloc.devices import resolve_device
from camloc.distributed import Dist, setup_distributed
from camloc.errors import error_line
from camloc.evaluation import EvaluationError, classification_ap, coco_evaluate
from camloc.images import ImageError, load_image
from camloc.io_utils import OutputError, atomic_output, writable_folder
from camloc.localize import Localizer
from camloc.models import (
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    CamModel,
    ModelError,
    build_model,
    checkpoint_payload,
    load_checkpoint,
    probabilities,
)
from camloc.models import atomic_torch_save as save
from camloc.preprocess import normalise

#: Guards against values that would exhaust the machine (one process per worker, one tensor per batch).
MAX_BATCH, MAX_WORKERS = 1024, 64
#: Steps between the training loop's reads of the device (the running loss, the NaN check).
SYNC_EVERY = 50
#: Batches each loader worker prepares ahead.
PREFETCH = 4


class TrainingError(Exception):
    """A problem that stops training; printed as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, type=Path, help="training image folder (e.g. train2017)")
    p.add_argument("--ann", required=True, type=Path, help="training instances JSON")
    p.add_argument("--val-images", type=Path, help="validation image folder (e.g. val2017)")
    p.add_argument("--val-ann", type=Path, help="validation instances JSON")
    p.add_argument("--out", required=True, type=Path, help="output folder for last.pt, best.pt, log.jsonl")
    p.add_argument("--arch", default="resnet50", help="torchvision classifier (resnet50, mobilenet_v2, ...)")
    p.add_argument("--weights", default="imagenet", help="imagenet | PATH (checkpoint / state_dict+json) | none")
    p.add_argument("--mode", default="multilabel", choices=["multilabel", "crops"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (backbone: × --backbone-lr-scale)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=448)
    p.add_argument("--freeze-backbone", action="store_true", help="train the linear head only")
    p.add_argument("--dilate", action="store_true",
                   help="dilate the last stage (output stride 16: finer maps; resnet*, mobilenet_v3*)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--limit", type=int, help="use only the first N training images (smoke tests)")
    p.add_argument("--val-limit", type=int, default=0,
                   help="also measure localisation AP50 of CAM boxes on the first N validation images")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the per-class gating thresholds computed on the training images at the end")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    problems = [message for bad, message in [
        (args.epochs < 1, "--epochs must be ≥ 1"),
        (not 1 <= args.batch_size <= MAX_BATCH, f"--batch-size must be from 1 to {MAX_BATCH}"),
        (not (math.isfinite(args.lr) and args.lr > 0), "--lr must be a finite number > 0"),
        (not (math.isfinite(args.backbone_lr_scale) and args.backbone_lr_scale >= 0),
         "--backbone-lr-scale must be a finite number ≥ 0"),
        (not (math.isfinite(args.weight_decay) and args.weight_decay >= 0),
         "--weight-decay must be a finite number ≥ 0"),
        (not (math.isfinite(args.warmup_epochs) and args.warmup_epochs >= 0),
         "--warmup-epochs must be a finite number ≥ 0"),
        (not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE,
         f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"),
        (not 0 <= args.workers <= MAX_WORKERS, f"--workers must be from 0 to {MAX_WORKERS}"),
        (args.limit is not None and args.limit < 1, "--limit must be ≥ 1"),
        (args.val_limit < 0, "--val-limit must be ≥ 0"),
        (not 0 <= args.seed < 2**32, "--seed must be from 0 to 2**32 - 1"),
        ((args.val_images is None) != (args.val_ann is None), "--val-images and --val-ann go together"),
    ] if bad]
    if problems:
        p.error("; ".join(problems))
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as exc:
        p.error(f"--device: {exc}")
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


def param_groups(model: CamModel, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Head at ``--lr``, backbone at ``--lr × --backbone-lr-scale``; no weight decay on biases/norms."""
    head_ids = {id(p) for p in model.head.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in head_ids, param.ndim > 1), []).append(param)
    return [{"params": params, "lr": args.lr * (1.0 if is_head else args.backbone_lr_scale),
             "weight_decay": args.weight_decay if decays else 0.0} for (is_head, decays), params in groups.items()]


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR factor: linear warm-up from 0 over ``warmup_steps``, then cosine down to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_loader(dataset, args: argparse.Namespace, node: Dist, epoch: int, train: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    sampler = DistributedSampler(dataset, node.world, node.rank, shuffle=train, seed=args.seed) \
        if node.world > 1 and train else None
    if sampler is not None:
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=args.workers, collate_fn=collate_skipping, generator=generator,
                      pin_memory=node.device.type == "cuda", drop_last=False,
                      prefetch_factor=PREFETCH if args.workers else None)


def on_device(loader: DataLoader, device: torch.device, mean: Tensor, std: Tensor
              ) -> Iterator[tuple[Tensor | None, Tensor | None, list[Unreadable]]]:
    """``(normalised images, targets, unreadable samples)`` of each batch, on the device (``None`` for a batch
    with nothing readable). The next batch's copy is issued before the current one is handed out, so with
    pinned memory the host-to-device copy overlaps the step running on it."""

    def moved(item):
        batch, skipped = item
        if batch is None:
            return None, None, skipped
        images, targets = batch
        images = normalise(images.to(device, non_blocking=True), mean, std)
        return images, targets.to(device, non_blocking=True), skipped

    ahead = None
    for item in loader:
        current, ahead = ahead, moved(item)
        if current is not None:
            yield current
    if ahead is not None:
        yield ahead


@torch.no_grad()
def validate(model: CamModel, meta: dict[str, Any], val_set, val_index: CocoIndex, args,
             node: Dist) -> dict[str, Any]:
    """Image-level classification mAP, and optionally CAM localisation AP50 on ``--val-limit`` images
    (unreadable images are left out of both and listed as ``val_unreadable_images``). Scores stay on the
    device until the last batch (one copy to the host)."""
    model.eval()
    scores, targets, unreadable = [], [], set()
    mean, std = normalisation(meta, node.device)
    for images, target, skipped in on_device(make_loader(val_set, args, node, 0, train=False), node.device, mean,
                                             std):
        unreadable.update(u.file_name for u in skipped)
        if images is None:
            continue
        with torch.autocast(node.device.type, dtype=amp_dtype(node.device), enabled=node.device.type == "cuda"):
            logits, _ = model(images)
        scores.append(probabilities(logits.float(), meta["activation"]))
        targets.append(target if target.ndim == 2 else nn.functional.one_hot(target, meta["num_classes"]))
    val_map, _ = classification_ap(torch.cat(scores).cpu().numpy(), torch.cat(targets).cpu().numpy()) \
        if scores else (None, None)
    result: dict[str, Any] = {"val_map": val_map}
    if args.val_limit:
        localizer = Localizer(model, meta, device=node.device)
        readable = []
        for im in val_index.images[: args.val_limit]:
            try:
                readable.append((im["id"], load_image(val_index.images_dir / im["file_name"])))
            except ImageError:
                unreadable.add(im["file_name"])
        dets = []
        for start in range(0, len(readable), args.batch_size):
            chunk = readable[start:start + args.batch_size]
            for found in localizer.predict_batch([image for _, image in chunk], [i for i, _ in chunk]):
                dets += found
        result["val_loc_ap50"] = (coco_evaluate(val_index.truth, dets, [i for i, _ in readable])["stats"][1]
                                  if readable else None)
    result["val_unreadable_images"] = sorted(unreadable)
    return result


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, else fp16 (with a gradient scaler); only used on CUDA."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def normalisation(meta: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """The model's input ``mean`` and ``std`` as ``(1, 3, 1, 1)`` tensors on the device."""
    return (torch.tensor(meta["mean"], device=device).view(1, 3, 1, 1),
            torch.tensor(meta["std"], device=device).view(1, 3, 1, 1))


def train_epoch(net: nn.Module, model: CamModel, meta: dict[str, Any], loader: DataLoader, optimizer, scheduler,
                scaler, args, node: Dist, epoch: int) -> dict[str, float]:
    """One pass over the training set; raises :class:`TrainingError` on a non-finite loss, or when no
    batch could be trained on.

    The host never waits for the device inside the loop: losses are summed on the device, and the sum
    and a non-finite flag are read every :data:`SYNC_EVERY` steps (the progress bar's loss, the NaN
    check: a run whose loss turned non-finite stops there, its last good checkpoint kept). Unreadable
    images are left out of their batch and listed. A batch left with one sample is skipped while
    BatchNorm layers train (they need two; ``dropped_samples`` counts them); under DDP every process
    skips the same steps (one flag all-reduced per step: the one synchronisation DDP needs), so none
    waits forever for the others.
    """
    model.train()
    if args.freeze_backbone:
        model.eval()  # frozen BatchNorm statistics and no dropout in the backbone
        model.head.train()
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    min_batch = 2 if any(isinstance(m, norms) and m.training for m in model.modules()) else 1
    criterion = nn.BCEWithLogitsLoss() if args.mode == "multilabel" else nn.CrossEntropyLoss()
    amp = node.device.type == "cuda"
    mean, std = normalisation(meta, node.device)
    total = torch.zeros((), dtype=torch.float64, device=node.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=node.device)
    count, dropped, unreadable, start = 0, 0, [], time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=not node.main,
               file=sys.stderr)
    for step, (images, targets, skipped) in enumerate(on_device(loader, node.device, mean, std), start=1):
        bar.update()
        unreadable += skipped
        size = 0 if images is None else len(images)
        usable = size >= min_batch
        if node.world > 1:
            flag = torch.tensor(float(usable), device=node.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            usable = flag.item() == 1
        if not usable:
            dropped += size
            continue
        with torch.autocast(node.device.type, dtype=amp_dtype(node.device), enabled=amp):
            logits = net(images)[0]
            loss = criterion(logits.float(), targets)
        nonfinite |= ~torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.detach().double() * len(images)
        count += len(images)
        if step % SYNC_EVERY == 0:
            check_finite(nonfinite, node, epoch, args)
            bar.set_postfix(loss=f"{total.item() / count:.4f}",
                            img_s=f"{count * node.world / (time.perf_counter() - start):.1f}")
    bar.close()
    check_finite(nonfinite, node, epoch, args)
    stats = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=node.device),
                         torch.tensor(float(dropped), dtype=torch.float64, device=node.device)])
    if node.world > 1:
        dist.all_reduce(stats)
        everyone: list[list[Unreadable]] = [[] for _ in range(node.world)]
        dist.all_gather_object(everyone, unreadable)
        unreadable = [u for part in everyone for u in part]
    if stats[1].item() == 0 and not stats[2].item():
        first = f" ({unreadable[0].reason})" if unreadable else ""
        raise TrainingError(f"none of the {len(loader.dataset)} training samples could be read{first}; "
                            "check the image folder")
    if stats[1].item() == 0:
        raise TrainingError(f"no batch held {min_batch} readable samples, as BatchNorm needs to train; use more "
                            "images or a larger --batch-size")
    elapsed = time.perf_counter() - start
    return {"train_loss": stats[0].item() / stats[1].item(), "images_per_s": stats[1].item() / elapsed,
            "skipped_images": len(unreadable), "unreadable_images": sorted({u.file_name for u in unreadable}),
            "dropped_samples": int(stats[2].item()), "lr": optimizer.param_groups[-1]["lr"]}


def check_finite(nonfinite: Tensor, node: Dist, epoch: int, args) -> None:
    """A :class:`TrainingError` if any step's loss so far was NaN or infinite (on any process)."""
    flag = nonfinite.float()
    if node.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        raise TrainingError(f"the loss became NaN or infinite in epoch {epoch + 1}; the last good checkpoint is kept "
                            f"in {args.out}; lower --lr or check the data")


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
        start_epoch, best, history = resume(last, model, meta, optimizer, scheduler, scaler)
    elif args.resume and node.main:
        print(f"note: no {last} to resume from; starting a new run", file=sys.stderr)
    net = DistributedDataParallel(model) if node.world > 1 else model
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)
        record = {"epoch": epoch + 1, **train_epoch(net, model, meta, make_loader(train_set, args, node, epoch, True),
                                                   optimizer, scheduler, scaler, args, node, epoch)}
        if node.main:
            if val_set is not None:
                record.update(validate(model, meta, val_set, val_index, args, node))
            score = record.get("val_map")
            improved = score is not None and score > best
            best = max(best, score) if score is not None else best
            history.append(record)
            train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "epoch": epoch + 1, "best": best,
                           "history": [json.dumps(h) for h in history]}
            save(checkpoint_payload(model, meta, train_state=train_state), last)
            if improved or val_set is None:
                save(checkpoint_payload(model, meta, epoch=epoch + 1, val_map=score), args.out / "best.pt")
            write_log(args.out / "log.jsonl", history)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                           if not isinstance(v, list)), flush=True)
        node.barrier()
    if node.main:
        warn_unreadable(history)
        if not args.no_calibrate:
            calibrate(args.out / "best.pt", train_index, args, node)
    return {"history": history, "best": best}


def calibrate(checkpoint: Path, index: CocoIndex, args: argparse.Namespace, node: Dist) -> None:
    """Write the per-class gating thresholds (:mod:`camloc.calibration`) of the training images into
    ``checkpoint``'s meta, so that the ``calibrated`` gate of every recipe can use them."""
    model, meta, extras = load_checkpoint(checkpoint, node.device)
    probs, present = calibration_probabilities(model, meta, index, args.batch_size, node.device, limit=args.limit)
    meta["class_thresholds"] = class_thresholds(probs, present)
    meta["calibration"] = {"images": len(probs), "ann": args.ann.name, "img_size": meta["input_size"],
                           "quantile": QUANTILE, "min_positives": MIN_POSITIVES, "floor": FLOOR}
    save(checkpoint_payload(model, meta, **extras), checkpoint)


def warn_unreadable(history: list[dict[str, Any]]) -> None:
    """One warning line at the end of a run that skipped images (each epoch's list is in log.jsonl)."""
    train = sorted({name for record in history for name in record.get("unreadable_images", [])})
    val = sorted({name for record in history for name in record.get("val_unreadable_images", [])})
    if train or val:
        first = (train or val)[0]
        print(f"warning: {len(train)} training and {len(val)} validation images could not be read and were "
              f"skipped (listed in log.jsonl; first: {first})", file=sys.stderr)


def _finite(obj: Any) -> bool:
    """No NaN or infinity in a (nested) optimizer/scheduler state."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def resume(last: Path, model: CamModel, meta: dict[str, Any], optimizer, scheduler,
           scaler) -> tuple[int, float, list[dict[str, Any]]]:
    """Restore weights, optimizer, scheduler and scaler from ``last``; returns ``(epochs done, best
    validation mAP, history)``. A damaged file, or one from another run, is a :class:`TrainingError`."""
    try:
        saved, saved_meta, extras = load_checkpoint(last)
    except ModelError as exc:
        raise TrainingError(f"--resume: {exc}") from None
    if saved_meta["arch"] != meta["arch"] or saved_meta["class_names"] != meta["class_names"]:
        raise TrainingError(f"--resume: {last} holds a {saved_meta['arch']} with {saved_meta['num_classes']} "
                            f"classes, not this run's {meta['arch']} with {meta['num_classes']}; use another --out")
    state = extras.get("train_state")
    try:
        epoch, best = state["epoch"], state["best"]
        history = [json.loads(line) for line in state["history"]]
        if (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or isinstance(best, bool)
                or not isinstance(best, (int, float)) or not math.isfinite(best)
                or not all(isinstance(h, dict) for h in history)):
            raise ValueError(f"epoch {epoch!r}, best {best!r} or the history is invalid")
        if not _finite([state["optimizer"], state["scheduler"], state["scaler"]]):
            raise ValueError("the optimizer state holds NaN or inf")
        model.net.load_state_dict(saved.net.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (TypeError, KeyError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise TrainingError(f"--resume: {last} has a damaged training state ({exc.__class__.__name__}: {detail}); "
                            "delete it to start over, or use another --out") from None
    return epoch, float(best), history


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch records as JSON lines, replaced atomically."""
    with atomic_output(path) as handle:
        handle.write("".join(json.dumps(h) + "\n" for h in history))


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m train``; a problem ends it with exit status 2 and one ``error:`` line."""
    args = parse_args(argv)
    try:
        node = setup_distributed(args.device)
        if node.main:
            writable_folder(args.out)
        run(args, node)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\ninterrupted; continue with the same command plus --resume ({args.out / 'last.pt'})",
                  file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(exc, (TrainingError, DataError, ModelError, EvaluationError, OutputError, OSError)),
              file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # also when setup_distributed itself failed half-way
    return 0
