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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from camloc.data import (
    CocoCrops,
    CocoIndex,
    CocoMultiLabel,
    DataError,
    collate_skipping,
    eval_transform,
    train_transform,
)
from camloc.evaluation import classification_ap, coco_evaluate
from camloc.io_utils import atomic_output
from camloc.localize import Localizer
from camloc.models import CamModel, ModelError, build_model, checkpoint_payload, probabilities
from camloc.models import atomic_torch_save as save


class TrainingError(Exception):
    """A problem that stops training; printed as one line."""


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.img_size < 32:
        p.error("--epochs and --batch-size must be ≥ 1, --lr > 0, --img-size ≥ 32")
    if (args.val_images is None) != (args.val_ann is None):
        p.error("--val-images and --val-ann go together")
    return args


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo otherwise)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, torch.device(("cuda" if use_cuda else "cpu") if device == "auto" else device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def load_indexes(args: argparse.Namespace) -> tuple[CocoIndex, CocoIndex | None]:
    """Parse and check the training (and validation) annotations once, before building the model."""
    train_index = CocoIndex(args.ann, args.images)
    val_index = CocoIndex(args.val_ann, args.val_images) if args.val_ann else None
    if val_index and val_index.category_ids != train_index.category_ids:
        raise DataError("--val-ann has other categories than --ann")
    return train_index, val_index


def build_datasets(args: argparse.Namespace, train_index: CocoIndex, val_index: CocoIndex | None,
                   mean: list[float], std: list[float]):
    kind = CocoMultiLabel if args.mode == "multilabel" else CocoCrops
    train_set = kind(train_index, train_transform(args.img_size, mean, std), args.limit)
    val_set = kind(val_index, eval_transform(args.img_size, mean, std)) if val_index else None
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
                      pin_memory=node.device.type == "cuda", drop_last=False)


@torch.no_grad()
def validate(model: CamModel, meta: dict[str, Any], val_set, val_index, args, node: Dist) -> dict[str, Any]:
    """Image-level classification mAP, and optionally CAM localisation AP50 on ``--val-limit`` images."""
    model.eval()
    scores, targets = [], []
    for batch, _ in make_loader(val_set, args, node, 0, train=False):
        if batch is None:
            continue
        images, target = batch
        logits, _ = model(images.to(node.device))
        scores.append(probabilities(logits.float(), meta["activation"]).cpu())
        targets.append(target if target.ndim == 2 else nn.functional.one_hot(target, meta["num_classes"]))
    val_map, _ = classification_ap(torch.cat(scores).numpy(), torch.cat(targets).numpy()) if scores else (None, None)
    result: dict[str, Any] = {"val_map": val_map}
    if args.val_limit:
        localizer = Localizer(model, meta, device=node.device)
        images = val_index.images[: args.val_limit]
        dets = []
        for start in range(0, len(images), args.batch_size):
            chunk = images[start:start + args.batch_size]
            for found in localizer.predict_batch([val_index.images_dir / im["file_name"] for im in chunk],
                                                 [im["id"] for im in chunk]):
                dets += found
        result["val_loc_ap50"] = coco_evaluate(args.val_ann, dets, [im["id"] for im in images])["stats"][1]
    return result


def train_epoch(net: nn.Module, model: CamModel, loader: DataLoader, optimizer, scheduler, scaler, args,
                node: Dist, epoch: int) -> dict[str, float]:
    """One pass over the training set; raises :class:`TrainingError` on a non-finite loss."""
    model.train()
    if args.freeze_backbone:
        model.eval()  # frozen BatchNorm statistics and no dropout in the backbone
        model.head.train()
    criterion = nn.BCEWithLogitsLoss() if args.mode == "multilabel" else nn.CrossEntropyLoss()
    amp = node.device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    total, count, skipped, start = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=not node.main, file=sys.stderr)
    for batch, unreadable in bar:
        skipped += unreadable
        if batch is None:
            continue
        images, targets = (t.to(node.device, non_blocking=True) for t in batch)
        if amp:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(node.device.type, dtype=amp_dtype, enabled=amp):
            logits = net(images)[0]
            loss = criterion(logits.float(), targets)
        finite = torch.isfinite(loss.detach()).float()
        if node.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}; the last good checkpoint is kept "
                                f"in {args.out}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count * node.world / (time.perf_counter() - start):.1f}")
    stats = torch.tensor([total, count, skipped], dtype=torch.float64, device=node.device)
    if node.world > 1:
        dist.all_reduce(stats)
    elapsed = time.perf_counter() - start
    return {"train_loss": stats[0].item() / max(stats[1].item(), 1), "images_per_s": stats[1].item() / elapsed,
            "skipped_images": int(stats[2].item()), "lr": optimizer.param_groups[-1]["lr"]}


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
    train_set, val_set = build_datasets(args, train_index, val_index, meta["mean"], meta["std"])
    model.to(node.device)
    if node.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = (torch.optim.AdamW(param_groups(model, args)) if args.optimizer == "adamw"
                 else torch.optim.SGD(param_groups(model, args), momentum=0.9, nesterov=True))
    steps = math.ceil(len(train_set) / (args.batch_size * node.world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps * args.epochs, round(steps * args.warmup_epochs)))
    use_scaler = node.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(enabled=use_scaler)
    start_epoch, best, history = 0, -1.0, []
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        payload = torch.load(last, map_location="cpu", weights_only=True)
        model.net.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["train_state"]["optimizer"])
        scheduler.load_state_dict(payload["train_state"]["scheduler"])
        scaler.load_state_dict(payload["train_state"]["scaler"])
        start_epoch, best = payload["train_state"]["epoch"], payload["train_state"]["best"]
        history = [json.loads(line) for line in payload["train_state"]["history"]]
    elif args.resume and node.main:
        print(f"note: no {last} to resume from; starting a new run", file=sys.stderr)
    net = DistributedDataParallel(model) if node.world > 1 else model
    for epoch in range(start_epoch, args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)
        record = {"epoch": epoch + 1, **train_epoch(net, model, make_loader(train_set, args, node, epoch, True),
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
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
        if node.world > 1:
            dist.barrier()
    return {"history": history, "best": best}


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch records as JSON lines, replaced atomically."""
    with atomic_output(path) as handle:
        handle.write("".join(json.dumps(h) + "\n" for h in history))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    node = setup_distributed(args.device)
    try:
        if node.main:
            args.out.mkdir(parents=True, exist_ok=True)
        run(args, node)
    except (TrainingError, DataError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if node.main:
            print(f"\ninterrupted; continue with the same command plus --resume ({args.out / 'last.pt'})",
                  file=sys.stderr)
        return 130
    finally:
        if node.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0
