"""The evaluation run: decode → forward → box stage → progress → metrics, pipelined and shardable.

* DataLoader workers decode images; the main process runs the forward pass of a batch and hands
  each image's maps to the box stage (:mod:`camloc.boxstage`), which ``--box-workers`` processes
  run while the main process goes on with the next batch; results come back in image order and
  are appended to the progress file as they arrive.
* Under ``torchrun --nproc_per_node=N`` the batches are dealt to the ranks in turn (see
  :func:`batches_to_run`); each rank writes its own progress file; rank 0 waits for the others,
  merges the files, computes the metrics and writes the outputs — the same ``detections.json`` as
  one process. ``--resume`` reads every progress file in ``--out``, so a run may even resume with
  another number of processes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from camloc.boxstage import BoxPipeline, BoxStage, OrderedPool
from camloc.data import CocoImages, as_list
from camloc.distributed import Dist, setup_distributed
from camloc.evaluation import BoxAccuracy, Faithfulness, GroundTruth, localization_metrics
from camloc.io_utils import atomic_write_json, writable_folder
from camloc.localize import Localizer
from eval import progress


def present_classes(truth: GroundTruth, localizer: Localizer) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Per image: ``(model class index, its non-crowd [x, y, w, h] boxes)`` of each class present."""
    index = {cid: k for k, cid in enumerate(localizer.category_ids)}
    keep = ~truth.ann_crowd & np.isin(truth.ann_category, list(index))
    boxes: dict[int, dict[int, list]] = {}
    for image_id, category, box in zip(truth.ann_image[keep].tolist(), truth.ann_category[keep].tolist(),
                                       truth.ann_bbox[keep]):
        boxes.setdefault(image_id, {}).setdefault(index[category], []).append(box)
    return {image_id: [(k, np.array(b)) for k, b in sorted(per.items())] for image_id, per in boxes.items()}


def batches_to_run(images: list[dict], batch_size: int, node: Dist, finished: progress.Progress) -> list[list[dict]]:
    """This rank's batches that hold an image not finished yet.

    Batches are cut from the whole ordered image list and dealt to ranks in turn (rank ``r`` gets
    batches ``r, r + world, …``); a batch with any unfinished image runs whole. So every image is
    always in the same batch, whatever the number of ranks or where a run was resumed: the network
    sees the same inputs and gives the same numbers as one uninterrupted process.
    """
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    return [b for b in batches[node.rank::node.world] if any(im["id"] not in finished for im in b)]


def prepare_progress(args: argparse.Namespace, node: Dist, settings: dict[str, Any],
                     image_ids: set[int]) -> progress.Progress:
    """What is already done (``--resume``), and this rank's progress file ready for appending."""
    own = progress.progress_path(args.out, node.rank, node.world)
    if args.resume:
        finished = progress.read_all(args.out, settings, image_ids)
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


def evaluate_shard(args: argparse.Namespace, node: Dist, localizer: Localizer, images: list[dict],
                   truth_of: dict[int, list], settings: dict[str, Any], faith: Faithfulness | None = None) -> int:
    """Run this rank's share of ``images`` that are not done yet; returns how many it ran (``faith``: measure
    the maps of the classes present in each image, see :class:`camloc.evaluation.Faithfulness`)."""
    image_ids = {im["id"] for im in images}
    finished = prepare_progress(args, node, settings, image_ids)
    batches = batches_to_run(images, args.batch_size, node, finished)
    todo = [im for batch in batches for im in batch]
    starts = np.cumsum([0] + [len(b) for b in batches]).tolist()
    stage = BoxStage(localizer.recipe, tuple(localizer.category_ids), localizer.supported.cpu(), args.baseline)
    pipeline = BoxPipeline(stage)
    loader = DataLoader(CocoImages(args.images, todo), num_workers=args.workers, collate_fn=as_list,
                        batch_sampler=[range(a, b) for a, b in itertools.pairwise(starts)], persistent_workers=False)
    own = progress.progress_path(args.out, node.rank, node.world)
    # two batches in flight: the workers box one batch while the network runs the next
    with OrderedPool(stage, args.box_workers,
                     max_pending=max(2 * args.batch_size, 4 * args.box_workers)) as pool, own.open("a") as log, \
            tqdm(total=len(images), initial=len(finished.done) + len(finished.unreadable), unit="img", desc="eval",
                 file=sys.stderr, disable=not node.main) as bar:
        try:
            for batch in loader:
                readable = [(image_id, image) for image_id, image, _ in batch if image is not None]
                for image_id, image, reason in batch:
                    if image is None and image_id not in finished:
                        progress.write_unreadable(log, image_id, reason)
                analyses = localizer.analyze([image for _, image in readable]) if readable else []
                if faith is not None and readable:
                    faith.add_analyses(localizer, [image for _, image in readable], analyses,
                                       [[k for k, _ in truth_of.get(image_id, ())] for image_id, _ in readable])
                for (image_id, _), analysis in zip(readable, analyses):
                    if image_id in finished:  # run only to keep its batch whole
                        continue
                    for result in pool.submit(pipeline.job(image_id, analysis, truth_of.get(image_id, ()))):
                        progress.write(log, pipeline.finish(result))
                log.flush()
                bar.update(sum(image_id not in finished for image_id, _, _ in batch) * node.world)
        except KeyboardInterrupt:  # keep what the box workers have in hand, then stop
            for result in pool.drain():
                progress.write(log, pipeline.finish(result))
            raise
        for result in pool.drain():
            progress.write(log, pipeline.finish(result))
    return sum(im["id"] not in finished for im in todo)


def run_evaluation(args: argparse.Namespace, truth: GroundTruth, images: list[dict], localizer: Localizer,
                   settings: dict[str, Any], node: Dist) -> dict[str, Any] | None:
    """Evaluate ``images``; rank 0 returns the metrics (written to ``--out``), other ranks ``None``."""
    start = time.perf_counter()
    faith = Faithfulness() if getattr(args, "faithfulness", False) else None
    ran = evaluate_shard(args, node, localizer, images, present_classes(truth, localizer), settings, faith)
    node.barrier()
    if not node.main:
        return None
    elapsed = time.perf_counter() - start
    ids = {im["id"] for im in images}
    finished = progress.read_all(args.out, settings, ids)
    missing = [im["id"] for im in images if im["id"] not in finished]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no result after every rank finished (e.g. {missing[0]})")
    if not finished.done:
        reason = next(iter(finished.unreadable.values()))
        raise progress.ProgressError(f"none of the {len(images)} images could be read ({reason}); check --images")
    names = {im["id"]: im["file_name"] for im in images}
    failed = [{"image_id": i, "file_name": names[i], "reason": r} for i, r in sorted(finished.unreadable.items())]
    if failed:
        print(f"warning: {len(failed)} of {len(images)} images could not be read and are left out of the metrics "
              f"(listed in metrics.json; first: {failed[0]['file_name']})", file=sys.stderr)
    detections = [d for im in images if im["id"] in finished.done for d in finished.done[im["id"]].detections]
    metrics = localization_metrics(truth, detections, [im["id"] for im in images if im["id"] in finished.done])
    accuracy = BoxAccuracy()
    for im in images:
        if im["id"] in finished.done:
            result = finished.done[im["id"]]
            accuracy.add(result.hits, result.recognised)
    metrics["wsol"] = accuracy.result()
    if faith is not None:
        metrics["faithfulness"] = faith.result()
    metrics["settings"] = settings
    metrics["unreadable_images"] = failed
    metrics["images_per_second"] = round(ran * node.world / elapsed, 3) if ran and elapsed > 0 else None
    atomic_write_json(args.out / "detections.json", detections)
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
