"""The batched pipeline at the network's speed? One command, side by side in one run, on any device.

Builds a val2017-sized set from coco-mini (``--images`` files, the real val photos repeated under new
names with their annotations) and a ResNet-50 COCO-80 checkpoint (random backbone, the shared model's
head biases, as ``bench/eval_speed.py``), then prints:

1. the bare forward pass, fp32 (TF32 allowed on a GPU) and bf16 autocast, channels-last, at batch 8
   and ``--batch-size``;
2. ``python -m eval`` for ``seed`` and the default recipe at every ``--batch-sizes`` (64 and 128 on a GPU):
   images/s, its ratio to the bare bf16 forward rate for the recipe's passes, and the wall time from process
   start to ``metrics.json``, each with its ``--profile`` table (which stage bounds the run); a run that fails
   is a row saying how (its ``error:`` line), and the bench goes on;
3. ``python -m train`` on ``--train-images`` (10 000 on a GPU), steady state (after warm-up, without validation
   and checkpoints) and the whole run (process start to exit), each vs a bare forward + backward + step loop of
   the same model and batch;
4. checks: the pipeline's detections vs the Localizer's own path image by image (``--check`` images;
   ``seed`` identical boxes, scores within 1e-9 relative); on a GPU also the box stage on the device vs
   the CPU for the same CPU-computed maps, and GPU maps (fp32, bf16) vs CPU maps.

``PYTHONPATH=. python bench/gpu_speed.py`` (a GPU: 5000 images); ``--quick`` fits one device call of under
8 minutes (2000 images, train on 4000); on a CPU ``--images 200`` (or fewer) with a light model:
``--arch mobilenet_v2 --img-size 224 --batch-sizes 8``. ``--data`` and ``--weights`` point elsewhere than
``../shared/data`` (a machine without it). Results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_set(coco: Path, folder: Path, count: int) -> tuple[Path, Path]:
    """``count`` images (coco-mini val2017 repeated, hard links or copies) and their annotations."""
    data = json.loads((coco / "annotations" / "instances_val2017_mini.json").read_text())
    images_dir = folder / "images"
    images_dir.mkdir()
    base = sorted(data["images"], key=lambda im: im["id"])
    anns_of: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for i in range(count):
        source = base[i % len(base)]
        name = f"{i + 1:012d}.jpg"
        try:
            os.link(coco / "val2017" / source["file_name"], images_dir / name)
        except OSError:
            (images_dir / name).write_bytes((coco / "val2017" / source["file_name"]).read_bytes())
        images.append({**source, "id": i + 1, "file_name": name})
        annotations += [{**a, "id": len(annotations) + j + 1, "image_id": i + 1}
                        for j, a in enumerate(anns_of.get(source["id"], []))]
    ann = folder / "instances.json"
    ann.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return images_dir, ann


def checkpoint(arch: str, size: int, weights: Path, folder: Path) -> Path:
    """``arch`` with a COCO-80 head: random backbone, the shared model's head biases (realistic gating)."""
    from camloc.models import build_model, load_model, save_checkpoint
    from camloc.models.classes import COCO_NAMES

    shared, _ = load_model(weights)
    torch.manual_seed(0)
    model, meta = build_model(arch, list(COCO_NAMES), input_size=size)
    with torch.no_grad():
        model.head.weight.normal_(std=0.01)
        model.head.bias.copy_(shared.head.bias)
    path = folder / f"{arch}_coco80.pt"
    save_checkpoint(model, meta, path)
    return path


def bare_forward(path: Path, device: torch.device, batch: int, precision: str, seconds: float = 3.0) -> float:
    """Images/s of the network alone on random input (channels-last on a GPU), timed for ~``seconds``."""
    from camloc.localize import Localizer

    localizer = Localizer.from_checkpoint(path, device=device, precision=precision)
    x = torch.randn(batch, 3, localizer.img_size, localizer.img_size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), localizer._autocast():
            localizer.model(x)

    run()
    sync(device)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or count < 2:
        run()
        count += 1
    sync(device)
    return batch * count / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunFailedError(Exception):
    """A command of the bench that failed; the message is its one-line reason."""


def run_cli(module: str, args: list[str], timeout: float) -> tuple[float, str]:
    """Run ``python -m module`` in a fresh process; (wall seconds from start to exit, stderr). A failure or a
    timeout is a :class:`RunFailedError` holding the command's ``error:`` line (or the end of its stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailedError(f"timed out after {timeout:.0f} s") from None
    wall = time.perf_counter() - start
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        raise RunFailedError(lines[-1] if lines else f"exit {result.returncode}: {result.stderr[-300:].strip()}")
    return wall, result.stderr


def eval_command(recipe: str, images: Path, ann: Path, path: Path, out: Path, args, device: torch.device,
                 batch: int) -> list[str]:
    command = ["--images", str(images), "--ann", str(ann), "--checkpoint", str(path), "--out", str(out),
               "--recipe", recipe, "--batch-size", str(batch), "--workers", str(args.workers),
               "--device", str(device)]
    return command + (["--box-workers", str(args.box_workers)] if args.box_workers is not None else [])


def eval_run(recipe: str, batch: int, images: Path, ann: Path, path: Path, out: Path, args, device: torch.device
             ) -> dict[str, Any]:
    """One profiled ``python -m eval``: its figures, or ``{"failed": reason}``."""
    try:
        wall, err = run_cli("eval", [*eval_command(recipe, images, ann, path, out, args, device, batch), "--profile"],
                            args.timeout)
    except RunFailedError as exc:
        print(f"\n#### python -m eval, {recipe}, batch {batch}: FAILED — {exc}")
        return {"failed": str(exc)}
    metrics = json.loads((out / "metrics.json").read_text())
    table = err[err.find("lane "):] if "lane " in err else ""
    print(f"\n#### python -m eval, {recipe}, batch {batch}: {metrics['profile']['images']} images\n\n"
          f"```\n{table.strip()}\n```")
    outputs = next((row["seconds"] for row in metrics["profile"]["stages"] if row["stage"] == "metrics + outputs"), 0)
    return {"images_per_second": metrics["images_per_second"], "wall_seconds": wall,
            "metrics_seconds": outputs, "bound": metrics["profile"]["bound"]}


def check_against_localizer(images: Path, ann: Path, path: Path, recipes: list[str], count: int, args,
                            device: torch.device, folder: Path, batch: int) -> None:
    """The pipeline's detections of the first ``count`` images (JPEGs decoded as the Localizer does, by
    ``load_image``) = the Localizer's per-image path with the same batches."""
    from camloc.localize import Localizer

    data = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])[:count]
    for recipe in recipes:
        out = folder / f"check-{recipe}"
        try:
            run_cli("eval", [*eval_command(recipe, images, ann, path, out, args, device, batch), "--limit",
                             str(count), "--decode", "worker", "--max-dets", "0"], args.timeout)
        except RunFailedError as exc:
            print(f"check {recipe}: FAILED — {exc}")
            continue
        detections_path = out / "detections.json"
        localizer = Localizer.from_checkpoint(path, recipe=recipe, device=device)
        expected = []
        for start in range(0, len(data), batch):
            chunk = data[start:start + batch]
            for im, analysis in zip(chunk, localizer.analyze([images / im["file_name"] for im in chunk])):
                expected += localizer.detections(analysis, im["id"])
        got = json.loads(detections_path.read_text())
        same_boxes = [(d["image_id"], d["category_id"], d["bbox"]) for d in got] == \
            [(d["image_id"], d["category_id"], d["bbox"]) for d in expected]
        worst = max((abs(a["score"] - b["score"]) / max(abs(b["score"]), 1e-300) for a, b in zip(got, expected)),
                    default=0.0)
        print(f"check {recipe}: pipeline vs Localizer image by image on {count} images: identical boxes "
              f"{same_boxes} ({len(got)} vs {len(expected)} detections), max relative score difference {worst:.1e}")


def check_device_boxes(images: Path, ann: Path, path: Path, count: int, device: torch.device) -> None:
    """On a GPU: the box stage on the device vs the CPU for CPU-computed maps; GPU maps vs CPU maps."""
    from camloc.boxes import make_recipe
    from camloc.localize import Localizer

    data = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])[:count]
    files = [images / im["file_name"] for im in data]
    cpu = Localizer.from_checkpoint(path, device="cpu", recipe="seed").analyze(files)
    for name in ("seed", "multilevel-flip"):
        recipe = make_recipe(name, classes="all")
        same, total = 0, 0
        for analysis in cpu:
            top = torch.argsort(analysis.probs, descending=True)[:10]
            raw, probs = analysis.raw_maps[top], analysis.probs[top]
            host = recipe.boxes(raw, probs, analysis.size)
            moved = recipe.boxes(raw.to(device), probs.to(device), analysis.size)
            same += int(np.array_equal(host.xywh, moved.xywh) and np.array_equal(host.class_index, moved.class_index))
            total += 1
        print(f"check {name}: device box stage on CPU-computed maps = CPU boxes on {same}/{total} images")
    for precision in ("fp32", "bf16"):
        gpu = Localizer.from_checkpoint(path, device=device, recipe="seed", precision=precision).analyze(files)
        rel = max(float((g.raw_maps.cpu() - c.raw_maps).abs().max() / c.raw_maps.abs().max()) for g, c in zip(gpu, cpu))
        recipe = make_recipe("seed", classes="all")
        same = sum(np.array_equal(recipe.boxes(g.raw_maps.cpu(), g.probs.cpu(), g.size).xywh,
                                  recipe.boxes(c.raw_maps, c.probs, c.size).xywh) for g, c in zip(gpu, cpu))
        print(f"check maps on {device} ({precision}) vs CPU: max |Δ| / max |map| = {rel:.1e}; seed boxes of all 80 "
              f"classes identical on {same}/{len(files)} images")


def train_rates(images: Path, ann: Path, args, device: torch.device, out: Path, batch: int) -> dict[str, Any]:
    """``python -m train`` (one epoch on ``--train-images``, its images repeated as needed) vs the bare loop:
    steady state, the training loop, and the whole run from process start to exit."""
    from bench.train_speed import bare_loop

    command = ["--images", str(images), "--ann", str(ann), "--out", str(out), "--arch", args.arch, "--weights", "none",
               "--epochs", "1", "--batch-size", str(batch), "--img-size", str(args.img_size), "--workers",
               str(args.workers), "--device", str(device), "--limit", str(args.train_images), "--no-calibrate",
               "--profile"]
    try:
        wall, err = run_cli("train", command, args.timeout)
    except RunFailedError as exc:
        print(f"\npython -m train: FAILED — {exc}")
        return {"failed": str(exc)}
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    table = err[err.find("lane "):] if "lane " in err else ""
    print(f"\n#### python -m train, batch {batch}: {record['images']} images\n\n```\n{table.strip()}\n```")
    loop = bare_loop(args.arch, batch, args.img_size, device, steps=args.train_steps)
    return {"steady": record["steady_images_per_s"], "loop": record["images_per_s"],
            "whole_run": record["images"] / wall, "bare": loop}


def main() -> None:
    from camloc.boxes import DEFAULT_RECIPE
    from camloc.localize import Localizer
    from camloc.runtime.devices import resolve_device

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="one device call of under 8 minutes: 2000 images, train on 4000, 8 checked")
    parser.add_argument("--images", type=int)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--batch-sizes", default="64,128" if cuda else "8",
                        help="eval at each of these batch sizes (comma-separated); train at the first")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--box-workers", type=int)
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--train-steps", type=int, default=20 if cuda else 3)
    parser.add_argument("--check", type=int, help="images for the parity checks (0: none)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--data", type=Path, default=SHARED / "coco-mini", help="coco-mini folder")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "mobilenet_v2_coco80_linear.pth")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sizes = {"images": (2000, 5000, 200), "train_images": (4000, 10000, 64), "check": (8, 16, 16)}
    for name, (quick, gpu, cpu) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else gpu if cuda else cpu)
    if args.quick:
        args.timeout = min(args.timeout, 150)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    results: dict[str, Any] = {"device": str(device), "arch": args.arch, "img_size": args.img_size,
                               "images": args.images, "batch_sizes": batch_sizes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, ann = build_set(args.data, tmp, max(args.images, args.train_images))
        eval_ann = tmp / "instances_eval.json"
        data = json.loads(ann.read_text())
        kept = {im["id"] for im in data["images"][:args.images]}
        eval_ann.write_text(json.dumps({**data, "images": data["images"][:args.images],
                                        "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}))
        path = checkpoint(args.arch, args.img_size, args.weights, tmp)
        print(f"### {args.arch} {args.img_size}², {args.images} images, batches {batch_sizes}, {device}, "
              f"{args.workers} loader workers\n")
        batches = sorted({8, *batch_sizes})
        print("| bare forward | " + " | ".join(f"batch {b} img/s" for b in batches) + " |\n| --- |"
              + " --- |" * len(batches))
        bare = {}
        for precision in ("fp32", "bf16"):
            bare[precision] = [bare_forward(path, device, b, precision) for b in batches]
            print(f"| {precision} | " + " | ".join(f"{rate:.1f}" for rate in bare[precision]) + " |")
        results["bare_forward"] = bare
        localizer = Localizer.from_checkpoint(path, device="cpu")
        runs = []
        for batch in batch_sizes:
            for recipe in ("seed", DEFAULT_RECIPE):
                run = eval_run(recipe, batch, images, eval_ann, path, tmp / f"eval-{recipe}-{batch}", args, device)
                runs.append({"recipe": recipe, "batch": batch, **run})
        print("\n| recipe | batch | forward passes | eval img/s | / bare forward rate for its passes "
              "| start → metrics.json | metrics + outputs | bound by |\n" + "| --- " * 8 + "|")
        for run in runs:
            passes = len(localizer.views(run["recipe"]))
            if "failed" in run:
                print(f"| {run['recipe']} | {run['batch']} | {passes} | failed: {run['failed']} | | | | |")
                continue
            reference = bare["bf16" if device.type == "cuda" else "fp32"][batches.index(run["batch"])]
            run["ratio_to_bare"] = run["images_per_second"] / (reference / passes)
            print(f"| {run['recipe']} | {run['batch']} | {passes} | {run['images_per_second']:.1f} "
                  f"| **{run['ratio_to_bare']:.2f}** | {run['wall_seconds']:.1f} s | {run['metrics_seconds']:.2f} s "
                  f"| {run['bound']['lane']}: {run['bound']['stage']} |")
        results["eval"] = runs
        if not args.skip_train:
            train = train_rates(images, ann, args, device, tmp / "train", batch_sizes[0])
            if "failed" not in train:
                print(f"\npython -m train on {args.train_images} images, batch {batch_sizes[0]}, vs bare "
                      f"forward+backward+step {train['bare']:.1f} img/s: steady state {train['steady']:.1f} img/s "
                      f"→ **{train['steady'] / train['bare']:.2f}**, training loop {train['loop']:.1f} → "
                      f"{train['loop'] / train['bare']:.2f}, whole run (start to exit) {train['whole_run']:.1f} → "
                      f"{train['whole_run'] / train['bare']:.2f}")
            results["train"] = train
        if args.check:
            print()
            check_against_localizer(images, eval_ann, path, ["seed", DEFAULT_RECIPE], min(args.check, args.images),
                                    args, device, tmp, batch_sizes[0])
            if device.type == "cuda":
                check_device_boxes(images, eval_ann, path, min(args.check, args.images), device)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
