"""The evaluation run: read → decode → preprocess → forward → box stage → progress → metrics, a batch at a time.

* Loader workers read each image (:mod:`camloc.io.reader`): ``uint8`` pixels, or a JPEG's bytes that the
  main process decodes on the device with the rest of the batch; nothing is pickled but tensors.
* The main process resizes, normalises and mirrors the batch on the model's device, runs the forward
  pass (bf16 backbone on a GPU, float32 maps) and the box stage of the whole batch
  (:class:`~camloc.pipeline.boxstage.BoxPipeline`); the host-side remainder of each batch (wsolevaluation hits,
  tracing full-resolution masks, recipes that run on the CPU) goes to ``--box-workers`` processes
  while the main process runs the next batch. Results come back in batch order and each batch is one
  line of the progress file, so an interrupted run continues with ``--resume``.
* On a GPU the host-side finishing of batch ``i`` (waiting for its workers, writing its line) runs in
  a second thread while the main thread launches batch ``i + 1``, so the device does not idle while
  the host works.
* Under ``torchrun --nproc_per_node=N`` the batches are dealt to the ranks in turn (see
  :func:`batches_to_run`); each rank writes its own progress file; rank 0 waits for the others,
  merges the files, computes the metrics and writes the outputs — the same ``detections.json`` as
  one process. ``--resume`` reads every progress file in ``--out``, so a run may even resume with
  another number of processes.
* ``--profile`` charges every stage its seconds (:mod:`camloc.runtime.profiling`) and names the one that
  bounds the run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from camloc.detector import Detector
from camloc.evaluation import Faithfulness, GroundTruth
from camloc.io.atomic import atomic_output, atomic_write_json, writable_folder
from camloc.io.reader import SplitImages, collate, decode_batch
from camloc.pipeline import Localizer
from camloc.pipeline.boxstage import BoxPipeline, BoxStage, FinishedBatch, Truth, no_hits
from camloc.runtime.distributed import Dist, setup_distributed
from camloc.runtime.errors import in_stage, say
from camloc.runtime.memory import Halving
from camloc.runtime.profiling import StageClock, format_report, stage
from camloc.runtime.workerpool import OrderedPool
from eval import progress
from eval.results import RunResults
from eval.writer import BOX_LANE, BatchWriter

LOADER_LANE = "loader workers"
#: The stage named when a loader worker fails (reading or decoding a file).
LOADER_STAGE = "read + decode (loader workers)"


def present_classes(truth: GroundTruth, localizer: Localizer) -> dict[int, Truth]:
    """Per image: ``(model class index, its non-crowd [x, y, w, h] boxes)`` of each class present."""
    index = {cid: k for k, cid in enumerate(localizer.category_ids)}
    keep = ~truth.ann_crowd & np.isin(truth.ann_category, list(index))
    boxes: dict[int, dict[int, list]] = {}
    for image_id, category, box in zip(truth.ann_image[keep].tolist(), truth.ann_category[keep].tolist(),
                                       truth.ann_bbox[keep]):
        boxes.setdefault(image_id, {}).setdefault(index[category], []).append(box)
    return {image_id: tuple((k, np.array(b)) for k, b in sorted(per.items())) for image_id, per in boxes.items()}


def batches_to_run(images: list[dict], batch_size: int, node: Dist, finished: progress.Progress) -> list[list[dict]]:
    """This rank's batches that hold an image not finished yet.

    Batches are cut from the whole ordered image list and dealt to ranks in turn (rank ``r`` gets
    batches ``r, r + world, …``); a batch with any unfinished image runs whole. So every image is
    always in the same batch, whatever the number of ranks or where a run was resumed: the network
    sees the same inputs and gives the same numbers as one uninterrupted process.
    """
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    return [b for b in batches[node.rank::node.world] if any(im["id"] not in finished for im in b)]


def prepare_progress(args: argparse.Namespace, node: Dist, settings: dict[str, Any], images: list[dict]
                     ) -> progress.Progress:
    """What is already done (``--resume``; its image files checked unchanged), and this rank's progress file
    ready for appending."""
    own = progress.progress_path(args.out, node.rank, node.world)
    if args.resume:
        finished = progress.read_all(args.out, settings, {im["id"] for im in images})
        progress.check_stamps(finished, args.images, {im["id"]: im["file_name"] for im in images})
        if own.is_file():
            progress.drop_torn_tail(own)
        else:
            progress.start(own, settings)
        return finished
    if node.main:  # files of an earlier run with another number of processes
        layout = {progress.progress_path(args.out, r, node.world) for r in range(node.world)}
        for stale in set(progress.progress_files(args.out)) - layout:
            stale.unlink(missing_ok=True)
    progress.start(own, settings)
    return progress.Progress()


def split_loader(args: argparse.Namespace, batches: list[list[dict]], device: torch.device) -> DataLoader:
    """The loader of ``batches`` of the split's images (each read whole, in order; JPEGs decoded on the device
    with ``--decode device``, or ``auto`` on a GPU)."""
    todo = [im for batch in batches for im in batch]
    starts = np.cumsum([0] + [len(b) for b in batches]).tolist()
    device_decode = args.decode == "device" or (args.decode == "auto" and device.type == "cuda")
    return DataLoader(SplitImages(args.images, todo, device_decode), num_workers=args.workers, collate_fn=collate,
                      batch_sampler=[range(a, b) for a, b in itertools.pairwise(starts)],
                      pin_memory=device.type == "cuda", prefetch_factor=4 if args.workers else None)


def decoded_batches(loader: DataLoader, device: torch.device, clock: StageClock | None) -> Iterator[tuple]:
    """``(read batch, [(image id, pixels on the device)], {"stamps", "unreadable"})`` of each batch of ``loader``:
    the loader's time charged to its lane, a loader worker's failure named as its stage."""
    batch_iter = iter(loader)
    while True:
        with stage("wait for data"), in_stage(LOADER_STAGE):
            read = next(batch_iter, None)
        if read is None:
            return
        if clock:
            clock.add("read + decode", sum(item.seconds for item in read.items), LOADER_LANE)
        with stage("decode on device"):
            readable, unreadable = decode_batch(read, device)
        yield read, readable, {"stamps": {item.image_id: item.stamp for item in read.items}, "unreadable": unreadable}


def evaluate_detector_shard(args: argparse.Namespace, node: Dist, detector: Detector, images: list[dict],
                            settings: dict[str, Any], clock: StageClock | None,
                            results: RunResults) -> tuple[int, progress.Progress]:
    """:func:`evaluate_shard` for a detector: each part's detections from one forward pass (no maps, so no map
    hits and no box workers); the same progress lines, ``--resume``, ranks and halving on running out of memory."""
    finished = prepare_progress(args, node, settings, images)
    batches = batches_to_run(images, args.batch_size, node, finished)
    if clock:
        clock.lanes.update({LOADER_LANE: max(args.workers, 1)})
    own = progress.progress_path(args.out, node.rank, node.world)
    names = {im["id"]: im["file_name"] for im in images}
    halving = Halving(args.batch_size, detector.device)
    parts = itertools.count()

    def run_part(part: list, meta_of: dict) -> None:
        ids = [image_id for image_id, _ in part]
        with stage("forward"):
            found = detector.detect([p for _, p in part], ids)
        done = FinishedBatch(found, tuple(no_hits() for _ in ids), tuple([] for _ in ids))
        writer.write(next(parts), done, (ids, [meta_of["stamps"][i] for i in ids], meta_of.pop("unreadable", [])))

    with own.open("a") as log, tqdm(total=len(images), initial=len(finished.done) + len(finished.unreadable),
                                    unit="img", desc="eval", file=sys.stderr, disable=not node.main) as bar:
        writer = BatchWriter(None, None, log, finished, results, clock, threaded=False)
        for read, readable, meta in decoded_batches(split_loader(args, batches, detector.device), detector.device,
                                                    clock):
            halving.run(readable, lambda part, meta=meta: run_part(part, meta),
                        lambda item: f"image {item[0]} ({names[item[0]]})")
            if "unreadable" in meta:  # nothing readable: the batch is its unreadable images alone
                writer.submit(next(parts), None, ([], [], meta.pop("unreadable")))
            bar.update(sum(item.image_id not in finished for item in read.items) * node.world)
    return sum(im["id"] not in finished for batch in batches for im in batch), finished


def finish_in_thread(device) -> bool:
    """Whether batches are finished by a second thread: on a GPU, where the main thread's launches of the next
    batch then overlap the host's work on the last one (on a CPU both would compete for the same cores)."""
    return device.type == "cuda"


def evaluate_shard(args: argparse.Namespace, node: Dist, localizer: Localizer, images: list[dict],
                   truth_of: dict[int, Truth], settings: dict[str, Any], clock: StageClock | None,
                   results: RunResults, faith: Faithfulness | None = None) -> tuple[int, progress.Progress]:
    """Run this rank's share of ``images`` that are not done yet, feeding ``results`` as batches finish; returns how
    many it ran and what was finished before (``faith``: measure the maps of the classes present in each image, see
    :class:`camloc.evaluation.Faithfulness`).

    A batch that runs out of device memory is run again in halves, and later batches at that size
    (:class:`~camloc.runtime.memory.Halving`); each part is its own progress line."""
    finished = prepare_progress(args, node, settings, images)
    batches = batches_to_run(images, args.batch_size, node, finished)
    todo = [im for batch in batches for im in batch]
    device = localizer.device
    pipeline = BoxPipeline(localizer.recipe, localizer.category_ids, localizer.supported, args.baseline,
                           max_dets=args.max_dets, memory=localizer.max_memory)
    loader = split_loader(args, batches, device)
    if clock:
        clock.lanes.update({LOADER_LANE: max(args.workers, 1), BOX_LANE: max(args.box_workers, 1)})
    own = progress.progress_path(args.out, node.rank, node.world)
    views = localizer.views()
    names = {im["id"]: im["file_name"] for im in images}
    halving = Halving(args.batch_size, device)
    parts = itertools.count()

    def run_part(part: list, meta_of: dict) -> None:
        ids = [image_id for image_id, _ in part]
        pixels = [p for _, p in part]
        analysis = localizer.analyze_batch(pixels, views=views)
        if faith is not None:
            with stage("faithfulness"):
                faith.add_analyses(localizer, pixels, analysis.images(), [[k for k, _ in truth_of.get(i, ())]
                                                                          for i in ids])
        index = next(parts)
        job = pipeline.job(index, ids, analysis, [truth_of.get(i, ()) for i in ids])
        writer.submit(index, job, (ids, [meta_of["stamps"][i] for i in ids], meta_of.pop("unreadable", [])))

    with OrderedPool(BoxStage(localizer.recipe), args.box_workers, max_pending=max(2, 2 * args.box_workers)) as pool, \
            own.open("a") as log, \
            tqdm(total=len(images), initial=len(finished.done) + len(finished.unreadable), unit="img", desc="eval",
                 file=sys.stderr, disable=not node.main) as bar:
        writer = BatchWriter(pipeline, pool, log, finished, results, clock, threaded=finish_in_thread(device))
        try:
            for read, readable, meta in decoded_batches(loader, device, clock):
                halving.run(readable, lambda part, meta=meta: run_part(part, meta),
                            lambda item: f"image {item[0]} ({names[item[0]]})")
                if "unreadable" in meta:  # nothing readable: the batch is its unreadable images alone
                    writer.submit(next(parts), None, ([], [], meta.pop("unreadable")))
                bar.update(sum(item.image_id not in finished for item in read.items) * node.world)
        except KeyboardInterrupt:  # keep what the box workers have in hand, then stop
            writer.close()
            raise
        except BaseException:
            writer.abandon()
            raise
        writer.close()
    return sum(im["id"] not in finished for im in todo), finished


def run_evaluation(args: argparse.Namespace, truth: GroundTruth, images: list[dict], predictor: Localizer | Detector,
                   settings: dict[str, Any], node: Dist) -> dict[str, Any] | None:
    """Evaluate ``images`` with a Localizer (class maps and a recipe) or a Detector; rank 0 returns the metrics
    (written to ``--out``), other ranks ``None``."""
    start = time.perf_counter()
    clock = StageClock(predictor.device) if args.profile else None
    with clock.active() if clock else contextlib.nullcontext():
        faith = Faithfulness() if getattr(args, "faithfulness", False) else None
        results = RunResults(truth, images)
        if isinstance(predictor, Detector):
            ran, before = evaluate_detector_shard(args, node, predictor, images, settings, clock, results)
        else:
            ran, before = evaluate_shard(args, node, predictor, images, present_classes(truth, predictor), settings,
                                         clock, results, faith)
        node.barrier()
        if not node.main:
            return None
        elapsed = time.perf_counter() - start
        with stage("metrics + outputs"):
            metrics = finish_run(args, images, settings, ran, node, elapsed, results, before, faith)
    if clock:
        report = clock.report(ran, time.perf_counter() - start)
        metrics["profile"] = report
        atomic_write_json(args.out / "metrics.json", metrics, indent=1)
        say("\n" + format_report(report))
    return metrics


def finish_run(args: argparse.Namespace, images: list[dict], settings: dict[str, Any], ran: int, node: Dist,
               elapsed: float, results: RunResults, before: progress.Progress,
               faith: Faithfulness | None = None) -> dict[str, Any]:
    """Add what this process did not finish itself (resumed batches; other ranks' progress), then write
    ``detections.json`` and ``metrics.json`` (only accumulating and summarizing is left to do here)."""
    ids = {im["id"] for im in images}
    finished = progress.read_all(args.out, settings, ids) if node.world > 1 else before
    missing_ids = [im["id"] for im in images if im["id"] not in finished and im["id"] not in results.done]
    if node.world == 1:  # this process holds its own batches; the file need not be read again
        missing_ids = [i for i in missing_ids if i not in results.unreadable]
    if missing_ids:
        raise RuntimeError(f"{len(missing_ids)} images have no result after every rank finished (e.g. "
                           f"{missing_ids[0]})")
    results.missing(finished.done, finished.all_detections())
    unreadable = {**finished.unreadable, **results.unreadable}
    if not results.done:
        reason = next(iter(unreadable.values()))
        raise progress.ProgressError(f"none of the {len(images)} images could be read ({reason}); check --images")
    names = {im["id"]: im["file_name"] for im in images}
    failed = [{"image_id": i, "file_name": names[i], "reason": r} for i, r in sorted(unreadable.items())]
    if failed:
        say(f"warning: {len(failed)} of {len(images)} images could not be read and are left out of the metrics "
            f"(listed in metrics.json; first: {failed[0]['file_name']})")
    metrics, text = results.outputs([im["id"] for im in images if im["id"] in results.done])
    if faith is not None:
        metrics["faithfulness"] = faith.result()
    metrics["settings"] = settings
    metrics["image_stamps"] = progress.stamp_rows({**finished.stamps, **results.stamps})
    metrics["unreadable_images"] = failed
    metrics["images_per_second"] = round(ran * node.world / elapsed, 3) if ran and elapsed > 0 else None
    with atomic_output(args.out / "detections.json") as handle:
        handle.write(text)
    atomic_write_json(args.out / "metrics.json", metrics, indent=1)
    for path in progress.progress_files(args.out):
        path.unlink(missing_ok=True)
    return metrics


def distributed_node(args: argparse.Namespace) -> Dist:
    """This process's rank (one process unless started by torchrun) and its device; the output folder
    is checked by every rank before any work."""
    node = setup_distributed(args.device)
    writable_folder(args.out)
    return node
