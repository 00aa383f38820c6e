"""Detection models: torchvision's Faster R-CNN, RetinaNet or FCOS heads over a torchvision classifier's backbone.

A detector's name is ``HEAD_BACKBONE_fpn`` — ``HEAD`` one of :data:`HEADS`, ``BACKBONE`` a torchvision
classifier of a family whose stages can be tapped (MobileNetV2/V3, ResNet, ResNeXt, Wide-ResNet) — for
example ``fasterrcnn_mobilenet_v2_fpn`` (the default: the backbone of camloc's MobileNetV2 classifiers).
The backbone's last blocks at strides 8, 16 and 32 feed a feature pyramid (P3–P5, plus P6–P7 from P5),
so small images keep a fine level; anchors scale with the input size (:func:`anchor_sizes`).

Its backbone starts from a classifier's weights where the architectures match (``weights``: a camloc
checkpoint or a torchvision ``state_dict`` + JSON sidecar of that backbone; its head is dropped), from
torchvision's ImageNet weights (``"imagenet"``: downloaded once, or the file to fetch named offline), or
at random (``None``). A backbone that starts from weights keeps its batch-norm statistics frozen and its
stem (strides 2 and 4) fixed, as torchvision's detectors do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from camloc.models import (
    DETECTOR_KIND,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelError,
    family_of,
    imagenet_state_dict,
    load_model,
)
from camloc.models.meta import MAX_INPUT_SIZE, MIN_INPUT_SIZE

HEADS = ("fasterrcnn", "retinanet", "fcos")
DEFAULT_DETECTOR = "fasterrcnn_mobilenet_v2_fpn"
#: The longest side of the network's input, as a multiple of the shortest (torchvision's 1333 / 800).
MAX_SIZE_RATIO = 1333 / 800
#: Faster R-CNN's proposal and sampling budgets (smaller than torchvision's COCO settings: small images, CPUs).
RPN_TOP_N = {"pre_train": 1000, "post_train": 500, "pre_test": 500, "post_test": 300}
ROI_SAMPLES = 128
#: Pyramid channels, and the width of Faster R-CNN's two-layer box head (torchvision's COCO models: 256 and 1024,
#: a 13 M-parameter box head; narrower here, so that a CPU trains a detector in minutes: a training step of 8
#: images at 160 px went from ~10 s to ~2.5 s on this 2-core machine).
FPN_CHANNELS, BOX_HEAD_WIDTH = 128, 256


def parse_name(name: str) -> tuple[str, str]:
    """``(head, backbone arch)`` of a detector name such as ``fasterrcnn_mobilenet_v2_fpn``; a
    :class:`~camloc.models.ModelError` names the forms allowed otherwise."""
    head, _, rest = str(name).partition("_")
    backbone = rest.removesuffix("_fpn")
    if head not in HEADS or not rest.endswith("_fpn") or not backbone:
        raise ModelError(f"detector {name!r} is not HEAD_BACKBONE_fpn with HEAD one of {', '.join(HEADS)} "
                         f"(e.g. {DEFAULT_DETECTOR}, fcos_resnet50_fpn)")
    family_of(backbone)
    if not backbone.startswith(("mobilenet_v2", "mobilenet_v3", "resnet", "resnext", "wide_resnet")) \
            or backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"detector {name!r}: backbone {backbone!r} is not a MobileNetV2/V3, ResNet, ResNeXt or "
                         "Wide-ResNet classifier of torchvision")
    return head, backbone


def anchor_sizes(input_size: int) -> tuple[tuple[float, ...], ...]:
    """Anchor sides in pixels of the network's input, per pyramid level P3–P7: ``a·2^l`` and ``a·2^l·√2``
    with ``a = input_size / 20`` (8 px at 160 px, 40 px at 800 px), so objects from ~4 % of the image to
    the whole of it have an anchor of their scale."""
    base = input_size / 20
    return tuple((round(base * 2**level, 2), round(base * 2**level * math.sqrt(2), 2)) for level in range(5))


def _classifier(arch: str, frozen: bool) -> nn.Module:
    """An untrained torchvision classifier of ``arch``, with frozen batch norms when ``frozen``."""
    return torchvision.models.get_model(arch, weights=None, **({"norm_layer": FrozenBatchNorm2d} if frozen else {}))


def _pyramid_body(net: nn.Module, arch: str) -> tuple[nn.Module, dict[str, str], list[str]]:
    """The module the pyramid taps, its last block at strides 8, 16 and 32 (as IntermediateLayerGetter's
    ``return_layers``), and the names of its stem children (strides 2 and 4), fixed when pretrained."""
    if arch.startswith("mobilenet"):
        features = net.features
        strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
        ends = [strided[2] - 1, strided[3] - 1, len(features) - 1]  # strides 8, 16, 32
        return features, {str(i): str(level) for level, i in enumerate(ends)}, [str(i) for i in range(strided[1])]
    return net, {"layer2": "0", "layer3": "1", "layer4": "2"}, ["conv1", "bn1", "layer1"]


def _source_state(arch: str, weights: str | Path | None) -> tuple[dict[str, Tensor] | None, list[float], list[float]]:
    """The backbone weights to start from, and the input normalisation that goes with them."""
    if weights is None:
        return None, list(IMAGENET_MEAN), list(IMAGENET_STD)
    if str(weights) == "imagenet":
        return imagenet_state_dict(arch), list(IMAGENET_MEAN), list(IMAGENET_STD)
    source, meta = load_model(weights)
    if meta["arch"] != arch:
        raise ModelError(f"weights {weights} are a {meta['arch']} classifier; this detector's backbone is a {arch} "
                         f"(choose a {meta['arch'].split('_')[0]}… detector, or other weights)")
    return source.net.state_dict(), meta["mean"], meta["std"]


def _load_backbone(body: nn.Module, state: dict[str, Tensor], arch: str) -> None:
    """Copy a classifier's weights (same arch) into the pyramid's ``body``; every tensor of the body must be
    given, and nothing but the classifier's head may be left over."""
    if arch.startswith("mobilenet"):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    else:
        head_top = family_of(arch).head.split(".")[0]
        state = {k: v for k, v in state.items() if not k.startswith(head_top + ".")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[-1].strip()
        raise ModelError(f"the backbone weights do not fit a {arch} ({detail[:160]})") from None
    stray = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
    if stray:
        raise ModelError(f"the backbone weights do not fit a {arch}: {len(stray)} mismatched tensors, e.g. {stray[0]}")


def detector_network(meta: dict[str, Any]) -> nn.Module:
    """The untrained detection network that ``meta`` (see :func:`build_detector`) describes: the same
    modules, so a checkpoint's ``state_dict`` loads into it with ``strict=True``."""
    head, arch = parse_name(meta["arch"])
    net = _classifier(arch, meta["norm"] == "frozen")
    body, taps, _ = _pyramid_body(net, arch)
    channels = [[m for m in body.get_submodule(name).modules() if isinstance(m, nn.Conv2d)][-1].out_channels
                for name in taps]  # each tapped block's last convolution
    backbone = BackboneWithFPN(body, taps, channels, FPN_CHANNELS, extra_blocks=LastLevelP6P7(FPN_CHANNELS,
                                                                                               FPN_CHANNELS))
    size = meta["input_size"]
    common = {"min_size": size, "max_size": round(size * MAX_SIZE_RATIO), "image_mean": meta["mean"],
              "image_std": meta["std"]}
    classes = meta["num_classes"] + 1  # index 0: background
    if head == "fcos":  # one point per location; its "anchor" is the level's stride (centre sampling)
        strides = AnchorGenerator(tuple((8 * 2**level,) for level in range(5)), ((1.0,),) * 5)
        return FCOS(backbone, classes, anchor_generator=strides, **common)
    ratios = ((0.5, 1.0, 2.0),) * 5
    anchors = AnchorGenerator(anchor_sizes(size), ratios)
    if head == "retinanet":
        return RetinaNet(backbone, classes, anchor_generator=anchors, **common)
    return FasterRCNN(backbone, None, rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
                      box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_HEAD_WIDTH),
                      box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, classes),
                      rpn_pre_nms_top_n_train=RPN_TOP_N["pre_train"], rpn_post_nms_top_n_train=RPN_TOP_N["post_train"],
                      rpn_pre_nms_top_n_test=RPN_TOP_N["pre_test"], rpn_post_nms_top_n_test=RPN_TOP_N["post_test"],
                      box_batch_size_per_image=ROI_SAMPLES, **common)


def build_detector(name: str, class_names: list[str], category_ids: list[int], weights: str | Path | None = None,
                   input_size: int = 512) -> tuple[nn.Module, dict[str, Any]]:
    """A new detector for ``class_names`` (with their dataset ``category_ids``) and its metadata.

    ``weights``: see the module's docstring. ``input_size``: the shorter side images are resized to (the
    longer one at most :data:`MAX_SIZE_RATIO` times that). Returns ``(network, meta)``; ``meta`` has
    ``kind: "detector"``, ``arch``, ``num_classes``, ``class_names``, ``category_ids``, ``mean``, ``std``,
    ``input_size``, ``norm`` (``frozen`` batch norms or trainable ``batch`` ones) and ``backbone_weights``.
    """
    _, arch = parse_name(name)
    if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
        raise ModelError(f"input size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, got {input_size}")
    state, mean, std = _source_state(arch, weights)
    meta = {"kind": DETECTOR_KIND, "arch": name, "num_classes": len(class_names), "class_names": list(class_names),
            "category_ids": [int(c) for c in category_ids], "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "input_size": int(input_size),
            "norm": "batch" if state is None else "frozen",
            "backbone_weights": "none" if weights is None else str(weights)}
    model = detector_network(meta)
    if state is not None:
        body = model.backbone.body
        _load_backbone(body, state, arch)
        for name in _pyramid_body(_classifier(arch, True), arch)[2]:
            body.get_submodule(name).requires_grad_(False)
    return model, meta
