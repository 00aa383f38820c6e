"""CAM speed, measured side by side in one run (``make bench``; figures quoted in the README).

ResNet-50, 448×448, batch 8, all 80 COCO classes:

1. (forward + all 80 CAMs) / (forward alone)                                   target ≤ 1.05
2. all-80 maps in one matmul vs the course's per-class, per-channel Python loop,
   and vs pytorch-grad-cam's GradCAM called once per target class               target ≥ 50×
3. box extraction (upsample, normalise, Otsu, contours, scores) of 80 classes of a
   640×480 image / one image's forward pass                                     target ≤ 0.25

4. every map method, all 80 classes of a batch (MobileNetV2 COCO-80, 224², batch 4): camloc vs
   pytorch-grad-cam and torchcam side by side, each peer called as its documentation shows, once per
   class (torchcam: one forward pass, then one backward pass per class with ``retain_graph``)   target ≥ 1×

5. maps laid on the image by the model's measured geometry (``align="measured"``) vs stretched over it
   (``none``), side by side: 80 maps normalised to a 640×480 image, and the default recipe's six-view
   analysis of a batch (the demo model, whose checkpoint stores its geometry)              target ≈ 1×

The slow references are timed on a few classes and scaled linearly to 80 (their cost per class is
constant: one Python loop, one forward + backward or one set of masked passes per class); the script
says so. ``--methods-only`` runs section 4 alone, ``--align-only`` section 5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from camloc.boxes import boxes_from_raw_maps
from camloc.cam import class_activation_maps, make_method, normalize_maps
from camloc.demo import DEMO_CHECKPOINT, example_images
from camloc.localize import Localizer
from camloc.models import build_model, load_model
from camloc.models.classes import COCO_NAMES
from camloc.models.geometry import MapGeometry

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls after one warm-up call, in seconds."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def timed_pair(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median times of two functions measured alternately (so drifts in machine speed hit both)."""
    first(), second()
    a, b = [], []
    for _ in range(repeat):
        for fn, samples in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def course_loop_maps(features: torch.Tensor, weight: torch.Tensor, classes: list[int]) -> np.ndarray:
    """The classic per-class, per-channel CAM loop (one image)."""
    feats = features.numpy()
    maps = []
    for k in classes:
        cam = np.zeros(feats.shape[1:], dtype=np.float32)
        for c, w in enumerate(weight[k].detach().numpy()):
            cam += w * feats[c]
        maps.append(cam)
    return np.stack(maps)


#: (camloc method, its options, pytorch-grad-cam class name, torchcam class name, layers). Score-CAM at a
#: 32-channel layer (one masked forward pass per channel: at the 1280-channel feature layer the peers need
#: 1280 passes per image *per class*). EigenCAM is class-agnostic: one call serves every class, for all three.
METHOD_PEERS = [
    ("cam", {}, None, "CAM", ["features"]),
    ("gradcam", {}, "GradCAM", "GradCAM", ["features"]),
    ("gradcampp", {}, "GradCAMPlusPlus", "GradCAMpp", ["features"]),
    ("xgradcam", {"layer": "features.13"}, "XGradCAM", "XGradCAM", ["features.13"]),
    ("hirescam", {"layer": "features.13"}, "HiResCAM", None, ["features.13"]),
    ("layercam", {"layer": "features.13"}, "LayerCAM", "LayerCAM", ["features.13"]),
    ("layercam-fused", {}, "LayerCAM", "LayerCAM", ["features.6", "features.13", "features"]),
    ("eigencam", {"layer": "features"}, "EigenCAM", None, ["features"]),
    ("scorecam", {"layer": "features.6"}, "ScoreCAM", "ScoreCAM", ["features.6"]),
]


def peer_per_class(library: str, cls_name: str, net: torch.nn.Module, layers: list[str], images: torch.Tensor,
                   classes: list[int]) -> Callable[[], None] | None:
    """One call of the peer per class of ``classes`` for the whole batch, as its documentation shows."""
    if library == "pytorch-grad-cam":
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        method = getattr(pytorch_grad_cam, cls_name)(model=net, target_layers=[net.get_submodule(n) for n in layers])
        if cls_name == "ScoreCAM":
            method.batch_size = 32

        def run() -> None:
            for k in classes:
                method(input_tensor=images, targets=[ClassifierOutputTarget(k)] * len(images))
        return run
    import torchcam.methods

    extractor = getattr(torchcam.methods, cls_name)(net, layers if len(layers) > 1 else layers[0])

    def run_torchcam() -> None:
        scores = net(images)
        for i, k in enumerate(classes):
            kwargs = {"retain_graph": i + 1 < len(classes)} if cls_name not in ("CAM", "ScoreCAM") else {}
            cams = extractor(k, scores, **kwargs)
            if len(cams) > 1:
                extractor.fuse_cams(cams)
    return run_torchcam


def method_throughput(args: argparse.Namespace) -> None:
    """Section 4: every method's maps of all 80 classes, camloc vs the peers, measured side by side."""
    import logging
    import warnings

    logging.getLogger("torchcam").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    weights = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
    model, _ = load_model(weights) if weights.is_file() else build_model("mobilenet_v2", list(COCO_NAMES))
    model.eval()
    net = model.net
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print("\n4. every method, all 80 classes of a batch of 4 (MobileNetV2 COCO-80, 224²); peers timed on "
          f"{args.sample_classes} classes and scaled to 80 (EigenCAM: one call)")
    print("| method | camloc, 80 classes | pytorch-grad-cam | torchcam |\n| --- | --- | --- | --- |")
    for name, options, pgc_name, tc_name, layers in METHOD_PEERS:
        method = make_method(name, **options)
        ours = timed(lambda method=method: method.maps(model, images), 1 if name == "scorecam" else 2)
        cells = []
        for library, cls_name in (("pytorch-grad-cam", pgc_name), ("torchcam", tc_name)):
            try:
                run = peer_per_class(library, cls_name, net, layers, images,
                                     [0] if name == "eigencam" else list(range(args.sample_classes)))
            except (ImportError, TypeError):
                run = None
            if run is None:
                cells.append("—")
                continue
            scale = 1 if name == "eigencam" else 80 / args.sample_classes
            theirs = timed(run, 1) * scale
            cells.append(f"{theirs:.2f} s (camloc **{theirs / ours:.1f}×** faster)")
        print(f"| {name} | {ours:.2f} s | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sample-classes", type=int, default=4, help="classes timed for the slow references")
    parser.add_argument("--methods-only", action="store_true", help="run section 4 (every method vs the peers) alone")
    parser.add_argument("--align-only", action="store_true", help="run section 5 (aligned vs stretched maps) alone")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.methods_only or args.align_only:
        (method_throughput if args.methods_only else alignment_cost)(args)
        return
    model, _ = build_model("resnet50", list(COCO_NAMES))
    model.eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-50 {args.size}² batch {args.batch}")

    with torch.inference_mode():

        def forward_and_cams() -> torch.Tensor:
            _, features = model(images)
            cam_input, weight, _ = model.cam_terms(features)
            return class_activation_maps(cam_input, weight)

        forward, forward_cams = timed_pair(lambda: model(images), forward_and_cams, args.repeat)
        _, features = model(images)
        cam_input, weight, _ = model.cam_terms(features)
        ours = timed(lambda: class_activation_maps(cam_input, weight), 20)

    sample = list(range(args.sample_classes))
    loop_per_image = timed(lambda: course_loop_maps(features[0], weight, sample), 3) / len(sample) * 80
    loop = loop_per_image * args.batch
    print(f"\n1. forward {forward * 1e3:.0f} ms, forward + 80 CAMs {forward_cams * 1e3:.0f} ms: "
          f"ratio {forward_cams / forward:.3f} (target ≤ 1.05)")
    print(f"2. all 80 CAMs of the batch, one matmul: {ours * 1e3:.2f} ms")
    print(f"   course-style loop (per class, per channel): {loop:.2f} s (timed on {len(sample)} classes × 1 image, "
          f"scaled to 80 × {args.batch}) → camloc is {loop / ours:,.0f}× faster")
    print(f"   incl. the forward pass: camloc {forward_cams:.2f} s vs course {forward + loop:.2f} s "
          f"→ {(forward + loop) / forward_cams:.1f}× faster")

    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("   pytorch-grad-cam not installed (make bench installs it in .venv-bench): skipped")
    else:
        net = model.net
        grad_cam = GradCAM(model=net, target_layers=[net.layer4])

        def grad_cam_sample() -> None:
            for k in sample:
                grad_cam(input_tensor=images, targets=[ClassifierOutputTarget(k)] * args.batch)

        theirs = timed(grad_cam_sample, 1) / len(sample) * 80
        print(f"   pytorch-grad-cam GradCAM, 80 targets: {theirs:.1f} s (timed on {len(sample)} targets, scaled "
              f"to 80) → camloc (forward + 80 CAMs) is {theirs / forward_cams:.0f}× faster")

    one_image = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        single = timed(lambda: model(one_image), args.repeat)
    per_image = forward / args.batch
    print(f"3. one image's forward: {single * 1e3:.0f} ms (batch 1), {per_image * 1e3:.0f} ms (per image in batch "
          f"{args.batch}); boxes for 80 classes of a 640×480 image (target ≤ 0.25 of a forward):")
    for label, raw in box_inputs():
        probs = np.random.default_rng(0).random(len(raw))
        found = boxes_from_raw_maps(raw, (480, 640))

        def extract(raw: torch.Tensor = raw, probs: np.ndarray = probs) -> None:
            boxes = boxes_from_raw_maps(raw, (480, 640))
            _ = boxes.heat * probs[boxes.class_index]

        boxes = timed(extract, args.repeat)
        print(f"   {label}: {len(found)} boxes, {boxes * 1e3:.0f} ms → ratio {boxes / per_image:.2f} "
              f"(batched forward) / {boxes / single:.2f} (batch-1 forward)")
    method_throughput(args)
    alignment_cost(args)


def alignment_cost(args: argparse.Namespace) -> None:
    """Section 5: what laying maps by the measured geometry costs, side by side with the stretched grid."""
    raw = torch.randn(80, 14, 14, generator=torch.Generator().manual_seed(0))
    frame = MapGeometry((32.0, 32.0), (-12.8, -11.5)).frame(448)
    stretched, laid = timed_pair(lambda: normalize_maps(raw, (480, 640)),
                                 lambda: normalize_maps(raw, (480, 640), frame), args.repeat * 3)
    print(f"\n5. 80 maps normalised to 640×480: stretched {stretched * 1e3:.1f} ms, laid by a measured frame "
          f"{laid * 1e3:.1f} ms → ratio {laid / stretched:.2f}")
    model, meta = load_model(DEMO_CHECKPOINT)
    images = example_images()[:4]
    plain, aligned = (Localizer(model, meta, img_size=320, device="cpu", align=align) for align in ("none", "measured"))
    none_s, measured_s = timed_pair(lambda: plain.analyze(images), lambda: aligned.analyze(images), args.repeat)
    print(f"   the default recipe's {len(plain.views())} views of {len(images)} images (demo model @ 320, every "
          "class's map; its geometry stored in its checkpoint): "
          f"none {len(images) / none_s:.2f} images/s, measured {len(images) / measured_s:.2f} images/s → "
          f"time ratio {measured_s / none_s:.2f} (target ≈ 1)")


def box_inputs() -> list[tuple[str, torch.Tensor]]:
    """Raw 80-class maps to box: real CAMs of a real 640×480 COCO image (shared MobileNetV2
    COCO-80, when ../shared/data is there) and random noise upsampled from 14×14 (worst case:
    many contours)."""
    inputs = []
    weights = SHARED / "weights" / "mobilenet_v2_coco80_linear.pth"
    image = SHARED / "coco-mini" / "val2017" / "000000005001.jpg"
    if weights.is_file() and image.is_file():
        analysis = Localizer.from_checkpoint(weights, device="cpu").analyze(image)[0]
        inputs.append(("real CAMs (MobileNetV2 COCO-80, 000000005001.jpg)", analysis.raw_maps))
    inputs.append(("random 14×14 noise maps", torch.randn(80, 14, 14, generator=torch.Generator().manual_seed(0))))
    return inputs


if __name__ == "__main__":
    main()
