"""The training loop: loaders that keep a device fed, one epoch of steps, validation on the device."""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from camloc.evaluation import classification_ap, coco_evaluate
from camloc.io.data import (
    CocoIndex,
    Unreadable,
    collate_skipping,
)
from camloc.io.images import ImageError, load_image
from camloc.io.preprocess import normalise
from camloc.models import (
    CamModel,
    probabilities,
)
from camloc.pipeline import Localizer
from camloc.runtime.distributed import Dist
from camloc.runtime.profiling import stage
from train.state import TrainingError

#: Steps between the training loop's reads of the device (the running loss, the NaN check).
SYNC_EVERY = 50


#: Batches each loader worker prepares ahead.
PREFETCH = 4


def param_groups(model: nn.Module, args: argparse.Namespace, backbone: nn.Module | None = None
                 ) -> list[dict[str, Any]]:
    """Head at ``--lr``, backbone at ``--lr × --backbone-lr-scale``; no weight decay on biases/norms. The head is
    a classifier's ``model.head``, or everything outside ``backbone`` when it is given (a detector's)."""
    if backbone is None:
        head_ids = {id(p) for p in model.head.parameters()}
    else:
        head_ids = {id(p) for p in model.parameters()} - {id(p) for p in backbone.parameters()}
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


def make_loader(dataset, args: argparse.Namespace, node: Dist, epoch: int, train: bool,
                collate: Callable = collate_skipping) -> DataLoader:
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    sampler = DistributedSampler(dataset, node.world, node.rank, shuffle=train, seed=args.seed) \
        if node.world > 1 and train else None
    if sampler is not None:
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=args.workers, collate_fn=collate, generator=generator,
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
        with torch.no_grad(), torch.autocast(node.device.type, dtype=amp_dtype(node.device),
                                             enabled=node.device.type == "cuda"):
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


def optimizer_step(loss: Tensor, optimizer, scaler, scheduler) -> None:
    """One training step from ``loss`` (the classifier's and the detector's loops alike): gradients through the
    (possibly scaling) ``scaler``, the optimizer's step, the schedule's."""
    optimizer.zero_grad(set_to_none=True)
    with stage("backward"):
        scaler.scale(loss).backward()
    with stage("optimizer step"):
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()


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
    steady = SteadyRate(node.device, warmup_steps(len(loader)))
    batches = on_device(loader, node.device, mean, std)
    for step in itertools.count(1):
        with stage("wait for data"):
            item = next(batches, None)
        if item is None:
            break
        images, targets, skipped = item
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
        with stage("forward"), torch.autocast(node.device.type, dtype=amp_dtype(node.device), enabled=amp):
            logits = net(images)[0]
            loss = criterion(logits.float(), targets)
        nonfinite |= ~torch.isfinite(loss.detach())
        optimizer_step(loss, optimizer, scaler, scheduler)
        total += loss.detach().double() * len(images)
        count += len(images)
        steady.step(step, len(images))
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
            "steady_images_per_s": steady.rate(node.world), "images": int(stats[1].item()),
            "skipped_images": len(unreadable), "unreadable_images": sorted({u.file_name for u in unreadable}),
            "dropped_samples": int(stats[2].item()), "lr": optimizer.param_groups[-1]["lr"]}


def warmup_steps(steps: int) -> int:
    """Steps left out of the steady-state rate: the first tenth of the epoch, at least 2 and at most 50 (cuDNN's
    algorithm search, the allocator's growth, the loader's start), fewer when the epoch is short."""
    return min(max(2, steps // 10), 50, max(steps // 2, 0))


class SteadyRate:
    """Images per second of the steps after the warm-up, the device synchronised where the window starts and ends
    (the loop itself never waits for the device: two synchronisations per epoch)."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.started: float | None = None
        self.images, self.last = 0, 0.0

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self, step: int, images: int) -> None:
        if step == self.warmup:
            self.started = self._sync()
        elif self.started is not None:
            self.images += images

    def rate(self, processes: int = 1) -> float | None:
        """Images per second of every process together (``None``: no step after the warm-up)."""
        if self.started is None or not self.images:
            return None
        return self.images * processes / (self._sync() - self.started)


def check_finite(nonfinite: Tensor, node: Dist, epoch: int, args) -> None:
    """A :class:`TrainingError` if any step's loss so far was NaN or infinite (on any process)."""
    flag = nonfinite.float()
    if node.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        raise TrainingError(f"the loss became NaN or infinite in epoch {epoch + 1}; the last good checkpoint is kept "
                            f"in {args.out}; lower --lr or check the data")

