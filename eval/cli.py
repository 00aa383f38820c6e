"""``python -m eval``: localisation mAP of CAM boxes (or of a detector's) on a COCO split (val2017 by default).

Writes ``OUT/detections.json`` (COCO results, loads unchanged in pycocotools' ``loadRes``) and
``OUT/metrics.json`` (COCO 12 stats, VOC mAP@0.5, per-class APs, PR curves for the app,
wsolevaluation's MaxBoxAccV2 / GT-known / Top-1 Loc of the maps), both atomically. Finished
images are appended to progress files as it runs, so an interrupted run continues with
``--resume``. Runs alone or under ``torchrun --nproc_per_node=N -m eval`` (see :mod:`eval.run`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from camloc.boxes import DEFAULT_RECIPE, FULL_RESOLUTION, RECIPES, make_recipe
from camloc.cam import DEFAULT_METHOD, METHODS
from camloc.detector import Detector, checkpoint_kind
from camloc.evaluation import STAT_NAMES, EvaluationError, GroundTruth
from camloc.io.atomic import OutputError
from camloc.io.data import DataError, check_image_files
from camloc.io.digest import file_digest
from camloc.io.images import ImageError
from camloc.io.lock import exclusive_folder
from camloc.models import MAX_INPUT_SIZE, MIN_INPUT_SIZE, ModelError
from camloc.models.classes import class_mismatch
from camloc.pipeline import Localizer
from camloc.pipeline.analysis import ALIGNMENTS
from camloc.pipeline.detections import MAX_DETECTIONS
from camloc.runtime.devices import GPU_BATCH, MAX_GPU_LOADERS, loader_defaults, resolve_device
from camloc.runtime.errors import error_line, one_line_warnings, say
from camloc.runtime.memory import DeviceMemoryError, memory_budget, parse_memory
from camloc.runtime.workerpool import default_box_workers
from eval import progress
from eval.progress import ProgressError
from eval.run import distributed_node, run_evaluation

#: Guards against values that would exhaust the machine (one process per worker, one tensor per batch).
MAX_BATCH, MAX_WORKERS = 1024, 64
#: Batch size and loader processes on a CPU (two cores' worth; the network holds the cores).
CPU_BATCH, CPU_WORKERS = 8, 2


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def box_scale_option(text: str) -> int | str:
    """``--box-scale``: an integer, or ``full`` for the image's resolution (the recipe checks the range)."""
    if text == FULL_RESOLUTION:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or {FULL_RESOLUTION!r}, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="folder with the split's images")
    parser.add_argument("--ann", required=True, type=Path, help="COCO instances JSON of the split")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="camloc checkpoint or state_dict + .json; a detector checkpoint (python -m train "
                             "--detector) gives its own boxes")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                        help=f"map method (camloc.cam.METHODS; default {DEFAULT_METHOD})")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                        help=f"box recipe (default {DEFAULT_RECIPE}; seed = the course recipe)")
    parser.add_argument("--threshold", help="recipe option: 'otsu' or a fraction of the map's max, e.g. 0.2")
    parser.add_argument("--boxes", choices=["all", "largest"], help="recipe option: all contours or the largest")
    parser.add_argument("--classes", help="recipe option: all | topk:N | prob:P (classes boxed per image)")
    parser.add_argument("--baseline", choices=["full", "center"], help="ignore the maps: full-image or centre boxes")
    parser.add_argument("--img-size", type=int, help="network input size (default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true", help="average maps over scales 0.75/1/1.25 and flips")
    parser.add_argument("--align", choices=ALIGNMENTS,
                        help="how maps are laid on the image: none (the grid stretched over it, the course's way) or "
                             "measured (each cell where the model's measured geometry says it looks); default: the "
                             "recipe's (seed: none)")
    parser.add_argument("--batch-size", type=int,
                        help=f"images per batch (default: {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU)")
    parser.add_argument("--workers", type=int,
                        help="DataLoader processes reading images (default: on a GPU min(cores − 2, "
                             f"{MAX_GPU_LOADERS}) shared by the processes of the machine, on a CPU {CPU_WORKERS})")
    parser.add_argument("--max-dets", type=int, default=MAX_DETECTIONS, metavar="N",
                        help=f"detections kept per image, the best scored (default {MAX_DETECTIONS}, COCO's "
                             "convention; 0: all)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="bytes the box stage may hold at once, e.g. 4GiB (default: half the GPU's free memory, "
                             "1 GiB on a CPU); a batch that still runs out of device memory is run in halves")
    parser.add_argument("--box-workers", type=int, default=default_box_workers(),
                        help="processes turning maps into boxes while the next batch runs through the network "
                             f"(0: in the main process; default: one per CPU core less one = {default_box_workers()})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the backbone's arithmetic (auto: bf16 on a GPU, fp32 on a CPU); maps, scores and "
                             "boxes are always float32 or wider")
    parser.add_argument("--decode", default="auto", choices=["auto", "worker", "device"],
                        help="where JPEGs are decoded: in the loader workers, or on the device in batches "
                             "(nvJPEG on a GPU); auto: device on a GPU, workers on a CPU")
    parser.add_argument("--box-scale", type=box_scale_option, metavar="S|full",
                        help="recipe option (evidence recipes): trace boxes at S times the feature grid, or 'full' "
                             "at the image's resolution (default: the recipe's; multilevel-flip: 2)")
    parser.add_argument("--profile", action="store_true",
                        help="seconds per stage (data, decode, preprocess, forward, box stage, workers, write) and "
                             "the stage that bounds the run, printed and kept in metrics.json")
    parser.add_argument("--limit", type=int, help="only the first N images (by image id)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also Average Drop / Increase in Confidence and insertion / deletion AUC of each present "
                             "class's map (1 + 2×16 extra forward passes per map; one process, no --resume)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        make_recipe(args.recipe, threshold=args.threshold, mode=args.boxes, classes=args.classes,
                    box_scale=args.box_scale)
    except ValueError as exc:
        parser.error(str(exc))
    if (args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH) or (
            args.workers is not None and not 0 <= args.workers <= MAX_WORKERS) or (
            args.limit is not None and args.limit < 1) or not 0 <= args.box_workers <= MAX_WORKERS:
        parser.error(f"--batch-size must be from 1 to {MAX_BATCH}, --workers and --box-workers from 0 to "
                     f"{MAX_WORKERS}, --limit ≥ 1")
    if args.max_dets < 0:
        parser.error("--max-dets must be ≥ 0 (0: every detection)")
    if args.max_memory is not None:
        try:
            args.max_memory = parse_memory(args.max_memory)
        except ValueError as exc:
            parser.error(f"--max-memory: {exc}")
    if args.faithfulness and (args.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        parser.error("--faithfulness measures the images of one uninterrupted process: drop --resume / torchrun")
    if args.img_size is not None and not MIN_INPUT_SIZE <= args.img_size <= MAX_INPUT_SIZE:
        parser.error(f"--img-size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    args.device = str(device)
    args.batch_size, args.workers = loader_defaults(device, args.batch_size, args.workers, CPU_BATCH, CPU_WORKERS,
                                                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the detections: a resumed run must have the same. Files are identified by content
    (SHA-256 of the checkpoint, its JSON sidecar and the annotations) and the image folder by its real
    path; each image's file is checked when a run resumes (:func:`eval.progress.check_stamps`)."""
    keys = ("checkpoint", "ann", "method", "recipe", "threshold", "boxes", "classes", "box_scale", "baseline",
            "img_size", "tta", "align", "limit", "precision", "decode", "max_dets")
    settings = {k: str(getattr(args, k)) for k in keys}
    if not args.checkpoint.is_file():  # read here first: its digest is a setting
        raise CliError(f"--checkpoint: {args.checkpoint}: no such checkpoint file")
    settings["align"] = args.align or make_recipe(args.recipe).default_align  # what "the recipe's" meant
    sidecar = args.checkpoint.with_suffix(".json")
    settings.update({"checkpoint_sha256": file_digest(args.checkpoint),
                     "sidecar_sha256": file_digest(sidecar) if sidecar.is_file() else None,
                     "ann_sha256": file_digest(args.ann), "images_folder": str(args.images.resolve()),
                     "device_type": torch.device(args.device).type})
    return settings


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


#: Options of the class-map path that a detector has no use for (option, attribute, value when not given).
MAP_ONLY = (("--method", "method", DEFAULT_METHOD), ("--recipe", "recipe", DEFAULT_RECIPE),
            ("--threshold", "threshold", None), ("--boxes", "boxes", None), ("--classes", "classes", None),
            ("--baseline", "baseline", None), ("--img-size", "img_size", None), ("--tta", "tta", False),
            ("--box-scale", "box_scale", None), ("--faithfulness", "faithfulness", False))


def build_predictor(args: argparse.Namespace, truth: GroundTruth) -> Localizer | Detector:
    """A Detector for a detector checkpoint (recognised from its metadata), else the checkpoint's Localizer."""
    try:
        kind = checkpoint_kind(args.checkpoint)
    except ModelError as exc:
        raise CliError(f"--checkpoint: {exc}") from None
    if kind != "detector":
        return build_localizer(args, truth)
    given = [option for option, key, unset in MAP_ONLY if getattr(args, key) != unset]
    if given:
        raise CliError(f"--checkpoint {args.checkpoint} is a detector, which has no class maps: {', '.join(given)} "
                       "apply to a classifier's maps only; drop them")
    try:
        detector = Detector.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                            max_dets=args.max_dets)
    except (ModelError, RuntimeError, ValueError) as exc:
        raise CliError(f"--checkpoint: {exc}") from None
    check_classes(args, detector.category_ids, detector.class_names, truth)
    return detector


def build_localizer(args: argparse.Namespace, truth: GroundTruth) -> Localizer:
    """The checkpoint's Localizer; its classes must be the annotation file's categories, matched by
    id *and* name (:func:`camloc.models.classes.class_mismatch`)."""
    try:
        localizer = Localizer.from_checkpoint(args.checkpoint, method=args.method, recipe=args.recipe,
                                              threshold=args.threshold, boxes=args.boxes, classes=args.classes,
                                              box_scale=args.box_scale, img_size=args.img_size, tta=args.tta,
                                              device=args.device, precision=args.precision,
                                              max_dets=args.max_dets, max_memory=args.max_memory, align=args.align)
    except (ModelError, RuntimeError, ValueError) as exc:
        raise CliError(f"--checkpoint: {exc}") from None
    check_classes(args, localizer.category_ids if "category_ids" in localizer.meta else None, localizer.class_names,
                  truth)
    return localizer


def check_classes(args: argparse.Namespace, category_ids: list[int] | None, class_names: list[str],
                  truth: GroundTruth) -> None:
    """The model's classes must be ``--ann``'s categories, by id and name; a :class:`CliError` says why not."""
    problem = class_mismatch(category_ids, class_names, truth.category_names, args.ann.name)
    if problem:
        raise CliError(f"--checkpoint {args.checkpoint}: {problem}")


def print_report(metrics: dict[str, Any]) -> None:
    rows = sorted((r for r in metrics["per_class"] if r["AP"] is not None), key=lambda r: -r["AP"])
    print(f"\n{'class':<16}{'#gt':>6}{'AP':>8}{'AP50':>8}{'AP75':>8}{'VOC50':>8}")
    for r in rows:
        print(f"{r['name']:<16}{r['num_gt']:>6}{r['AP']:>8.3f}{r['AP50']:>8.3f}{r['AP75']:>8.3f}{r['voc_AP50']:>8.3f}")
    print()
    for name in STAT_NAMES:
        print(f"  {name:<6} {metrics['coco'][name]:.4f}")
    print(f"  VOC mAP@0.5 {metrics['voc_map50']:.4f}" if metrics["voc_map50"] is not None else "")
    faith = metrics.get("faithfulness") or {}
    if faith.get("num_maps"):
        print(f"  Average Drop {faith['average_drop']:.2f} %, Increase in Confidence "
              f"{faith['increase_in_confidence']:.2f} %, insertion AUC {faith['insertion_auc']:.4f}, "
              f"deletion AUC {faith['deletion_auc']:.4f} over {faith['num_maps']} (image, class) maps")
    wsol = metrics.get("wsol") or {}
    if wsol.get("MaxBoxAccV2") is not None:
        per_delta = ", ".join(f"δ{d} {a:.4f}" for d, a in wsol["MaxBoxAcc"].items())
        print(f"  MaxBoxAccV2 {wsol['MaxBoxAccV2']:.4f} ({per_delta}); GT-known Loc {wsol['GT-known Loc']:.4f}, "
              f"Top-1 Loc {wsol['Top-1 Loc']:.4f} over {wsol['num_maps']} (image, class) maps")


def already_complete(args: argparse.Namespace, settings: dict[str, Any], images: list[dict], node) -> bool:
    """``--resume`` of a finished run: ``True`` (and one line) when ``--out`` holds the finished results of these
    settings and image files, so nothing is recomputed; a :class:`ProgressError` when it holds another run's;
    ``False`` when it holds no finished run."""
    metrics = progress.finished_run(args.out)
    if metrics is None:
        return False
    progress.check_finished(metrics, args.out, settings, args.images, {im["id"]: im["file_name"] for im in images})
    if node.main:
        print(f"already complete: {args.out} holds the finished results of these settings and image files "
              f"({metrics.get('num_images')} images, {metrics.get('num_detections')} detections); nothing to do")
    return True


def plan_line(args: argparse.Namespace, images: list[dict], predictor: Localizer | Detector, node) -> str:
    """The run's first line: what runs where, with the sizes chosen for the device."""
    caps = f"at most {args.max_dets} detections per image" if args.max_dets else "every detection"
    where = (f"eval: {len(images)} images on {predictor.device}"
             f"{f' × {node.world} processes' if node.world > 1 else ''}, batch {args.batch_size}, "
             f"{args.workers} loader workers")
    if isinstance(predictor, Detector):
        return f"{where}, detector {predictor.meta['arch']}, {caps}"
    memory = memory_budget(predictor.device, args.max_memory)
    return (f"{where}, {args.box_workers} box workers, recipe {predictor.recipe.name} on {predictor.method} maps, "
            f"{caps}, box stage memory {memory / 2**30:.1f} GiB")


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate (alone or as one rank of torchrun); rank 0 prints the report and returns the metrics."""
    node = distributed_node(args)
    try:
        with exclusive_folder(args.out, take=node.main, agree=node.from_main):
            truth, images = load_split(args)
            args.device = str(node.device)
            settings = settings_of(args)
            if args.resume and already_complete(args, settings, images, node):
                return None
            predictor = build_predictor(args, truth)
            if node.main:
                say(plan_line(args, images, predictor, node))
            metrics = run_evaluation(args, truth, images, predictor, settings, node)
    finally:
        node.close()
    if metrics is not None:
        print_report(metrics)
        print(f"\nwrote {args.out / 'detections.json'} ({metrics['num_detections']} detections) and "
              f"{args.out / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m eval``; a problem ends it with exit status 2 and one ``error:`` line."""
    args = parse_args(argv)
    try:
        with one_line_warnings():
            run(args)
    except KeyboardInterrupt:
        say(f"\ninterrupted; continue with the same command plus --resume (progress in {args.out})")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        say(error_line(exc, (CliError, EvaluationError, ModelError, DataError, ImageError, OutputError, OSError,
                             ProgressError, DeviceMemoryError)))
        return 2
    return 0
