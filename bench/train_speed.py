"""``python -m train`` images/s vs a bare forward + backward + optimizer loop of the same model and batch.

The training CLI decodes and augments real COCO images in DataLoader workers (pinned memory and
AMP/channels_last on CUDA) while the model trains; if the data pipeline kept up, its images/s
equal the bare loop's on random tensors. Run on this machine's device (``--device``), one epoch
of coco-mini train2017 (369 images); ``PYTHONPATH=. python bench/train_speed.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from camloc.models import build_model
from camloc.models.classes import COCO_NAMES
from camloc.runtime.devices import resolve_device
from train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def bare_loop(arch: str, batch: int, size: int, device: torch.device, steps: int) -> float:
    """Images per second of forward + BCE loss + backward + AdamW step on random tensors (AMP on CUDA)."""
    model, _ = build_model(arch, list(COCO_NAMES), input_size=size)
    model.to(device).train()
    amp = device.type == "cuda"
    if amp:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, len(COCO_NAMES), device=device) < 0.05).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x)[0].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if amp:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def cli_rate(arch: str, batch: int, size: int, device: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        code = train_main(["--images", str(COCO / "train2017"), "--ann",
                           str(COCO / "annotations" / "instances_train2017_mini.json"), "--out", out,
                           "--arch", arch, "--weights", "none", "--epochs", "1", "--batch-size", str(batch),
                           "--img-size", str(size), "--workers", str(workers), "--device", device])
        if code != 0:
            raise SystemExit(f"python -m train failed with exit code {code}")
        return json.loads((Path(out) / "log.jsonl").read_text().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not (COCO / "train2017").is_dir():
        raise SystemExit("../shared/data/coco-mini is missing")
    device = resolve_device(args.device)
    bare = bare_loop(args.arch, args.batch_size, args.img_size, device, steps=6)
    cli = cli_rate(args.arch, args.batch_size, args.img_size, str(device), args.workers)
    print(f"python -m train, {args.arch} {args.img_size}², batch {args.batch_size}, {args.workers} loader workers, "
          f"{device}: {cli:.1f} img/s vs bare forward+backward+step {bare:.1f} img/s → {cli / bare:.2f}")


if __name__ == "__main__":
    main()
