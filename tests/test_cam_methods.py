"""The registered map methods: each one's formula computed by hand on a small model, batching
invariants (images, class chunks, masked-pass batches, per-image classes) and option checks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from camloc.cam import METHODS, class_activation_maps, make_method
from camloc.cam.base import class_slots
from camloc.cam.elementwise import stage_chain
from camloc.localize import Localizer
from camloc.pipeline.analysis import gated_slots
from tests.fuzz_support import fuzz
from tests.helpers import gradient_image, random_head_model

#: Every method, with options that keep it quick on a ResNet-18 at 64 px (Score-CAM: 8 of 512 channels).
FAST = {"scorecam": {"max_channels": 8}}


@pytest.fixture(scope="module")
def tiny():
    model, meta = random_head_model("resnet18")
    return model, meta, torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def method(name, **options):
    return make_method(name, **{**FAST.get(name, {}), **options})


def activations_and_grads(model, images, layer_name, k):
    """``A`` at ``layer_name`` and ``∂y_k/∂A`` for every image, by plain autograd (one class)."""
    captured = []
    hook = model.net.get_submodule(layer_name).register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = model(images)[0]
    hook.remove()
    (grads,) = torch.autograd.grad(logits[:, k].sum(), captured[0])
    return captured[0].detach(), grads


def test_every_method_is_registered_with_a_label_and_its_formula():
    assert {"cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "layercam-fused", "eigencam",
            "scorecam"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name and cls.label and "=" in (cls.__doc__ or "")
    with pytest.raises(ValueError, match="unknown map method"):
        make_method("smoothgradcampp")
    with pytest.raises(ValueError, match="has no option 'layer'"):
        make_method("cam", layer="layer3")
    for name, options in [("gradcam", {"chunk": 0}), ("scorecam", {"batch_size": -1}),
                          ("scorecam", {"max_channels": 0}), ("layercam-fused", {"gamma": float("nan")}),
                          ("layercam-fused", {"layers": ()}),
                          ("layercam-fused", {"stages": True}), ("gradcampp", {"chunk": 2.5})]:
        with pytest.raises(ValueError, match="must be"):
            make_method(name, **options)
    assert make_method("gradcam", layer=None) == make_method("gradcam")  # None keeps the default


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_class_agnostic_method_is_one_that_gives_every_class_the_same_map(tiny, name):
    """``class_agnostic`` (the app captions such a method's map as the same for every class) says what the maps do."""
    model, _, images = tiny
    maps, _ = method(name).maps(model, images, torch.tensor([3, 60]))
    assert torch.equal(maps[:, 0], maps[:, 1]) == METHODS[name].class_agnostic


@pytest.mark.parametrize("name", sorted(METHODS))
def test_per_image_classes_batches_and_empty_selections_agree(tiny, name):
    """Maps of ``(B, k)`` per-image classes = rows of the all-class maps; a batch = its images one by one."""
    model, _, images = tiny
    chosen = method(name)
    every, logits = chosen.maps(model, images)
    assert every.shape[:2] == (3, 80) and torch.isfinite(every).all() and every.abs().amax() > 0
    slots = torch.tensor([[5, 0, 79], [41, 41, 2], [7, 8, 9]])
    per_image, _ = chosen.maps(model, images, slots)
    torch.testing.assert_close(per_image, torch.stack([every[b, slots[b]] for b in range(3)]), atol=1e-5, rtol=1e-4)
    shared, _ = chosen.maps(model, images, torch.tensor([3, 60]))
    torch.testing.assert_close(shared, every[:, [3, 60]], atol=1e-5, rtol=1e-4)
    single, single_logits = chosen.maps(model, images[1:2], torch.tensor([3, 60]))
    torch.testing.assert_close(single, shared[1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single_logits, logits[1:2], atol=1e-4, rtol=1e-4)
    empty, _ = chosen.maps(model, images, torch.zeros(3, 0, dtype=torch.long))
    assert empty.shape == (3, 0, *every.shape[-2:])


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"])
def test_gradient_methods_equal_their_formula_at_an_inner_layer_in_any_chunking(tiny, name):
    model, _, images = tiny
    classes = torch.tensor([4, 11, 50])
    maps = {chunk: method(name, layer="layer3", chunk=chunk).maps(model, images, classes)[0] for chunk in (1, 2, 16)}
    torch.testing.assert_close(maps[1], maps[16], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps[2], maps[16], atol=1e-6, rtol=1e-5)
    a, g = activations_and_grads(model, images, "layer3", 11)
    pooled_a = a.sum((-2, -1), keepdim=True)
    by_hand = {
        "gradcam": (g.mean((-2, -1), keepdim=True) * a).sum(1),
        "gradcampp": ((g**2 / (2 * g**2 + pooled_a * g**3) * F.relu(g)).sum((-2, -1), keepdim=True) * a).sum(1),
        "xgradcam": ((g * a / pooled_a).nan_to_num(0).sum((-2, -1), keepdim=True) * a).sum(1),
        "hirescam": (g * a).sum(1),
        "layercam": (F.relu(g) * a).sum(1),
    }[name]
    torch.testing.assert_close(maps[16][:, 1], by_hand, atol=1e-5, rtol=1e-4)


def test_at_the_feature_layer_gradcam_xgradcam_hirescam_are_cam_over_the_area(tiny):
    """For GAP + linear, ``∂y_k/∂A = W_k/(h·w)`` everywhere: the three equal CAM/(h·w); LayerCAM keeps ReLU(W)."""
    model, _, images = tiny
    with torch.no_grad():
        _, features = model(images)
    area = features.shape[-2] * features.shape[-1]
    cam = class_activation_maps(features, model.head.weight) / area
    for name in ("gradcam", "xgradcam", "hirescam"):
        torch.testing.assert_close(method(name).maps(model, images)[0], cam, atol=1e-5, rtol=1e-4)
    positive = class_activation_maps(features, F.relu(model.head.weight)) / area
    torch.testing.assert_close(method("layercam").maps(model, images)[0], positive, atol=1e-5, rtol=1e-4)


def test_layercam_fused_is_finer_than_the_last_grid_and_equals_eq9_fused_by_max(tiny):
    model, _, images = tiny
    assert [name for name, _ in stage_chain(model)] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                                        "layer4.0", "layer4.1"]
    fused, _ = method("layercam-fused").maps(model, images, torch.tensor([9]))
    assert fused.shape[-2:] == (8, 8)  # layer2's grid (stride 8), finer than layer4's 2×2
    assert fused.min() >= 0 and fused.max() <= math.tanh(2.0) + 1e-6
    per_layer = []
    for layer in ("layer2", "layer3", "layer4"):
        m = F.relu(method("layercam", layer=layer).maps(model, images, torch.tensor([9]))[0])
        scaled = torch.tanh(2 * m / m.amax((-2, -1), keepdim=True))
        per_layer.append(F.interpolate(scaled, size=(8, 8), mode="bilinear", align_corners=False))
    torch.testing.assert_close(fused, torch.stack(per_layer).amax(0), atol=1e-5, rtol=1e-4)
    explicit, _ = method("layercam-fused", layers=("layer2", "layer3", "layer4")).maps(model, images, torch.tensor([9]))
    torch.testing.assert_close(explicit, fused)
    two, _ = method("layercam-fused", stages=2).maps(model, images, torch.tensor([9]))
    assert two.shape[-2:] == (4, 4)


def test_scorecam_equals_its_formula_one_masked_image_at_a_time(tiny):
    model, _, images = tiny
    chosen = make_method("scorecam", layer="layer1", batch_size=5)  # 64 channels
    maps, _ = chosen.maps(model, images[:2], torch.tensor([3, 70]))
    a, _ = activations_and_grads(model, images[:2], "layer1", 0)
    for b in range(2):
        scores = []
        for c in range(a.shape[1]):
            mask = F.interpolate(a[b:b + 1, c:c + 1], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)
            with torch.no_grad():
                scores.append(model(images[b:b + 1] * mask)[0][0])
        weights = torch.softmax(torch.stack(scores), dim=0)  # (C, K): softmax over the channels
        for j, k in enumerate((3, 70)):
            torch.testing.assert_close(maps[b, j], (weights[:, k, None, None] * a[b]).sum(0), atol=1e-4, rtol=1e-3)
    once, _ = make_method("scorecam", layer="layer1", batch_size=1024).maps(model, images[:2], torch.tensor([3, 70]))
    torch.testing.assert_close(once, maps, atol=1e-5, rtol=1e-4)


def test_scorecam_channel_cap_keeps_the_most_varying_channels(tiny):
    model, _, images = tiny
    capped, _ = make_method("scorecam", max_channels=6).maps(model, images[:1], torch.tensor([12]))
    a, _ = activations_and_grads(model, images[:1], "layer4", 0)
    keep = a[0].flatten(1).var(-1).topk(6).indices
    scores = []
    for c in keep.tolist():
        mask = F.interpolate(a[:1, c:c + 1], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        with torch.no_grad():
            scores.append(model(images[:1] * mask)[0][0, 12])
    expected = (torch.softmax(torch.stack(scores), 0)[:, None, None] * a[0, keep]).sum(0)
    torch.testing.assert_close(capped[0, 0], expected, atol=1e-4, rtol=1e-3)


def test_eigencam_is_the_first_principal_component_signed_by_the_activations(tiny):
    model, _, images = tiny
    maps, _ = method("eigencam", layer="layer3").maps(model, images)
    assert (maps == maps[:, :1]).all()  # one map for every class
    a, _ = activations_and_grads(model, images, "layer3", 0)
    for b in range(3):
        x = a[b].flatten(1).T.double().numpy()
        x = x - x.mean(0)
        projection = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        ours = maps[b, 0].flatten().double().numpy()
        np.testing.assert_allclose(np.abs(ours), np.abs(projection), atol=1e-4, rtol=1e-3)
        assert np.dot(ours, a[b].sum(0).flatten().double().numpy()) >= 0  # signed to follow the activations


def test_gated_slots_pad_each_image_with_its_own_first_class():
    gate = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    slots, counts = gated_slots(gate)
    assert counts == [2, 0, 3] and slots.tolist() == [[1, 3, 1], [0, 0, 0], [0, 1, 2]]


def test_localizer_gates_each_image_for_a_per_class_method(tiny):
    """A gradient method computes, per image, the classes the recipe gates in — and those maps are the
    all-class maps' rows."""
    model, meta, _ = tiny
    images = [gradient_image(60, 80, seed=s) for s in (1, 2)]
    localizer = Localizer(model, meta, method="layercam", gradcam_layer="layer3", img_size=64, classes="topk:3",
                          recipe="multilevel")
    gated = localizer.analyze(images)
    full = localizer.analyze(images, classes=list(range(80)))
    for analysis, every in zip(gated, full):
        expected = torch.nonzero(localizer.select(analysis.probs[None])[0]).flatten()
        assert analysis.classes.tolist() == expected.tolist()
        torch.testing.assert_close(analysis.raw_maps, every.raw_maps[expected], atol=1e-5, rtol=1e-4)
    own = localizer.analyze(images, classes=[[70, 3], [12]])  # each image's own list
    assert [a.classes.tolist() for a in own] == [[3, 70], [12]]
    torch.testing.assert_close(own[1].raw_maps, full[1].raw_maps[[12]], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="class lists for 1"):
        localizer.analyze(images, classes=[[3]])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_in_the_localizer_and_gives_boxes(tiny, name):
    model, meta, _ = tiny
    localizer = Localizer(model, meta, method=method(name), img_size=64, classes="topk:2", recipe="multilevel-flip")
    dets = localizer.predict(gradient_image(70, 50))
    assert len({d["category_id"] for d in dets}) == 2 and all(0 <= d["score"] <= 1 for d in dets)
    assert Localizer(model, meta, method=name).method == name


@fuzz(200)
@given(st.lists(st.lists(st.booleans(), min_size=7, max_size=7), min_size=1, max_size=6))
def test_gated_slots_hold_each_image_classes_first_and_pad_with_gated_ones(rows):
    gate = torch.tensor(rows)
    slots, counts = gated_slots(gate)
    assert slots.shape == (len(rows), max(counts)) and counts == gate.sum(1).tolist()
    for row, own, n in zip(gate, slots, counts):
        assert own[:n].tolist() == torch.nonzero(row).flatten().tolist()
        assert all(bool(row[k]) for k in own[n:].tolist())  # padding repeats a gated class


@fuzz(300)
@given(st.integers(-3, 12), st.sampled_from([(1,), (3,), (2, 3), (1, 1), (3, 2), (2, 2, 2)]))
def test_class_slots_accept_shared_or_per_image_indices_and_refuse_the_rest(index, shape):
    classes = torch.full(shape, index)
    valid = 0 <= index < 10 and (len(shape) == 1 or (len(shape) == 2 and shape[0] == 2))
    if valid:
        slots = class_slots(classes, 2, 10, torch.device("cpu"))
        assert slots.shape == (2, shape[-1]) and (slots == index).all()
    else:
        with pytest.raises(ValueError, match=r"classes must be|class indices must be"):
            class_slots(classes, 2, 10, torch.device("cpu"))
    assert class_slots(None, 2, 10, torch.device("cpu")).tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("name", ["cam", "gradcam", "eigencam", "scorecam"])
def test_a_class_index_out_of_range_is_a_value_error(tiny, name):
    model, _, images = tiny
    with pytest.raises(ValueError, match="class indices must be in"):
        method(name).maps(model, images[:1, :, :32, :32], torch.tensor([80]))
