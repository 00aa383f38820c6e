"""``python -m eval``: localisation mAP of CAM boxes on a COCO split (val2017 by default).

Writes ``OUT/detections.json`` (COCO results, loads unchanged in pycocotools' ``loadRes``) and
``OUT/metrics.json`` (COCO 12 stats, VOC mAP@0.5, per-class APs, PR curves for the app), both
atomically. Finished images are appended to ``OUT/.progress.jsonl`` as it runs, so an
interrupted run continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from camloc.data import CocoImages, DataError, as_list, check_image_files
from camloc.devices import resolve_device
from camloc.errors import error_line
from camloc.evaluation import STAT_NAMES, Detections, EvaluationError, GroundTruth, localization_metrics
from camloc.images import ImageError
from camloc.io_utils import OutputError, atomic_output, atomic_write_json, writable_folder
from camloc.localize import Localizer
from camloc.models import MAX_INPUT_SIZE, MIN_INPUT_SIZE, ModelError
from camloc.recipes import DEFAULT_RECIPE, RECIPES, make_recipe

PROGRESS = ".progress.jsonl"
#: Guards against values that would exhaust the machine (one process per worker, one tensor per batch).
MAX_BATCH, MAX_WORKERS = 1024, 64


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="folder with the split's images")
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the split")
    parser.add_argument("--checkpoint", required=True, type=Path, help="camloc checkpoint or state_dict + .json")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--method", default="cam", choices=["cam", "gradcam", "gradcampp"])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                        help=f"box recipe (default {DEFAULT_RECIPE}; seed = the course recipe)")
    parser.add_argument("--threshold", help="recipe option: 'otsu' or a fraction of the map's max, e.g. 0.2")
    parser.add_argument("--boxes", choices=["all", "largest"], help="recipe option: all contours or the largest")
    parser.add_argument("--classes", help="recipe option: all | topk:N | prob:P (classes boxed per image)")
    parser.add_argument("--baseline", choices=["full", "center"], help="ignore the maps: full-image or centre boxes")
    parser.add_argument("--img-size", type=int, help="network input size (default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true", help="average maps over scales 0.75/1/1.25 and flips")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--limit", type=int, help="only the first N images (by image id)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        make_recipe(args.recipe, threshold=args.threshold, mode=args.boxes, classes=args.classes)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.batch_size <= MAX_BATCH or not 0 <= args.workers <= MAX_WORKERS or (
            args.limit is not None and args.limit < 1):
        parser.error(f"--batch-size must be from 1 to {MAX_BATCH}, --workers from 0 to {MAX_WORKERS}, --limit ≥ 1")
    if args.img_size is not None and not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE:
        parser.error(f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the detections: a resumed run must have the same."""
    keys = ("checkpoint", "ann", "method", "recipe", "threshold", "boxes", "classes", "baseline", "img_size", "tta",
            "limit")
    return {k: str(getattr(args, k)) for k in keys}


def read_progress(path: Path, settings: dict[str, Any], image_ids: set[int]) -> dict[int, list[dict]]:
    """Finished images of an interrupted run: ``{image_id: detections}``. A torn last line (the run
    was killed while writing it) is dropped; any other damage is a :class:`CliError`."""
    if not path.is_file():
        return {}
    damaged, hint = f"--resume: the progress file {path} is damaged", "; delete it or run without --resume"
    try:
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError) as exc:
        raise CliError(f"{damaged} ({exc.__class__.__name__}){hint}") from None
    if not isinstance(header, dict) or "settings" not in header:
        raise CliError(f"{damaged} (no settings line){hint}")
    if header["settings"] != settings:
        raise CliError(f"{path.parent} holds a run with other settings; use a new --out or run without --resume")
    done: dict[int, list[dict]] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise CliError(f"{damaged} (line {number} is not JSON){hint}") from None
        image_id = record.get("image_id") if isinstance(record, dict) else None
        if type(image_id) is not int or image_id not in image_ids or not isinstance(record.get("detections"), list):
            raise CliError(f"{damaged} (line {number} is not the record of an image of --ann){hint}")
        try:
            found = Detections(record["detections"])
        except EvaluationError as exc:
            raise CliError(f"{damaged} (line {number}: {exc}){hint}") from None
        if (found.image != image_id).any():
            raise CliError(f"{damaged} (line {number} mixes images){hint}")
        done[image_id] = record["detections"]
    return done


def load_split(args: argparse.Namespace) -> tuple[GroundTruth, list[dict]]:
    if not args.images.is_dir():
        raise CliError(f"--images {args.images} is not a folder")
    try:
        truth = GroundTruth(args.ann)
    except EvaluationError as exc:
        raise CliError(f"--ann: {exc}") from None
    images = sorted(truth.data["images"], key=lambda im: im["id"])[: args.limit]
    if not images:
        raise CliError(f"--ann {args.ann} lists no images")
    try:
        check_image_files(args.images, images, args.ann.name)
    except DataError as exc:
        raise CliError(str(exc)) from None
    return truth, images


def _same_name(ours: str, theirs: str) -> bool:
    def key(name: str) -> str:
        return " ".join(name.replace("_", " ").split()).casefold()
    return key(ours) == key(theirs)


def build_localizer(args: argparse.Namespace, truth: GroundTruth) -> Localizer:
    """The checkpoint's Localizer; its classes must be the annotation file's categories, matched by
    id *and* name (a model whose ids merely overlap, such as the 6-class demo model on COCO, is refused)."""
    try:
        localizer = Localizer.from_checkpoint(args.checkpoint, method=args.method, recipe=args.recipe,
                                              threshold=args.threshold,
                                              boxes=args.boxes, classes=args.classes, img_size=args.img_size,
                                              tta=args.tta, device=args.device)
    except (ModelError, RuntimeError, ValueError) as exc:
        raise CliError(f"--checkpoint: {exc}") from None
    known = truth.category_names
    if "category_ids" not in localizer.meta or not set(localizer.category_ids) <= set(known):
        raise CliError(f"--checkpoint {args.checkpoint}: its {localizer.meta['num_classes']} classes are not COCO's "
                       f"or {args.ann.name}'s; evaluate a model trained on these categories")
    clash = [(cid, name, known[cid]) for cid, name in zip(localizer.category_ids, localizer.class_names)
             if not _same_name(name, known[cid])]
    if clash:
        cid, name, theirs = clash[0]
        raise CliError(f"--checkpoint {args.checkpoint}: its class {name!r} has category id {cid}, which is "
                       f"{theirs!r} in {args.ann.name} ({len(clash)} of {len(localizer.class_names)} classes differ "
                       "by name); evaluate a model trained on these categories")
    if args.device.startswith("cuda"):
        localizer.model.to(memory_format=torch.channels_last)
    return localizer


def print_report(metrics: dict[str, Any]) -> None:
    rows = sorted((r for r in metrics["per_class"] if r["AP"] is not None), key=lambda r: -r["AP"])
    print(f"\n{'class':<16}{'#gt':>6}{'AP':>8}{'AP50':>8}{'AP75':>8}{'VOC50':>8}")
    for r in rows:
        print(f"{r['name']:<16}{r['num_gt']:>6}{r['AP']:>8.3f}{r['AP50']:>8.3f}{r['AP75']:>8.3f}{r['voc_AP50']:>8.3f}")
    print()
    for name in STAT_NAMES:
        print(f"  {name:<6} {metrics['coco'][name]:.4f}")
    print(f"  VOC mAP@0.5 {metrics['voc_map50']:.4f}" if metrics["voc_map50"] is not None else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    writable_folder(args.out)
    truth, images = load_split(args)
    localizer = build_localizer(args, truth)
    progress_path = args.out / PROGRESS
    settings = settings_of(args)
    done = read_progress(progress_path, settings, {im["id"] for im in images}) if args.resume else {}
    todo = [im for im in images if im["id"] not in done]
    if not args.resume or not progress_path.is_file():
        with atomic_output(progress_path) as handle:
            handle.write(json.dumps({"settings": settings}) + "\n")
    loader = DataLoader(CocoImages(args.images, todo), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=as_list, persistent_workers=False)
    failed: list[dict[str, Any]] = []
    file_names = {im["id"]: im["file_name"] for im in todo}
    start = time.perf_counter()
    with progress_path.open("a") as log, tqdm(total=len(images), initial=len(done), unit="img",
                                              desc="eval", file=sys.stderr) as bar:
        for batch in loader:
            readable = [(i, im) for i, im, err in batch if im is not None]
            failed += [unreadable_record(i, file_names[i], err) for i, im, err in batch if im is None]
            analyses = localizer.analyze([im for _, im in readable]) if readable else []
            for (image_id, _), analysis in zip(readable, analyses):
                dets = (localizer.baseline_detections(analysis, args.baseline, image_id) if args.baseline
                        else localizer.detections(analysis, image_id))
                done[image_id] = dets
                log.write(json.dumps({"image_id": image_id, "detections": dets}) + "\n")
            log.flush()
            bar.update(len(batch))
    elapsed = time.perf_counter() - start
    if not done:
        raise CliError(f"none of the {len(images)} images could be read ({failed[0]['reason']}); check --images")
    if failed:
        print(f"warning: {len(failed)} of {len(images)} images could not be read and are left out of the metrics "
              f"(listed in metrics.json; first: {failed[0]['file_name']})", file=sys.stderr)
    detections = [d for im in images for d in done.get(im["id"], [])]
    metrics = localization_metrics(truth, detections, [im["id"] for im in images if im["id"] in done])
    metrics["settings"] = settings
    metrics["unreadable_images"] = failed
    metrics["images_per_second"] = round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None
    atomic_write_json(args.out / "detections.json", detections)
    atomic_write_json(args.out / "metrics.json", metrics, indent=1)
    progress_path.unlink(missing_ok=True)
    print_report(metrics)
    print(f"\nwrote {args.out / 'detections.json'} ({len(detections)} detections) and {args.out / 'metrics.json'}")
    return metrics


def unreadable_record(image_id: int, file_name: str, reason: str) -> dict[str, Any]:
    """How ``metrics.json`` lists an image that could not be decoded."""
    return {"image_id": image_id, "file_name": file_name, "reason": reason}


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m eval``; a problem ends it with exit status 2 and one ``error:`` line."""
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with the same command plus --resume (progress in {args.out / PROGRESS})",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(exc, (CliError, EvaluationError, ModelError, DataError, ImageError, OutputError, OSError)),
              file=sys.stderr)
        return 2
    return 0
