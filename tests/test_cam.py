import pytest
import torch
import torch.nn.functional as F

from camloc.cam import class_activation_maps, gradient_maps, normalize_maps, upsample_bilinear
from tests.helpers import random_head_model


def test_cam_selects_classes_and_keeps_device_and_dtype():
    features = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    weight = torch.randn(10, 16, dtype=torch.float64)
    maps = class_activation_maps(features, weight)
    assert maps.shape == (3, 10, 5, 7) and maps.dtype == torch.float64
    expected = torch.einsum("kc,bchw->bkhw", weight, features)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(class_activation_maps(features, weight, [7, 2]), expected[:, [7, 2]])
    per_image = torch.randn(3, 10, 16, dtype=torch.float64)
    torch.testing.assert_close(class_activation_maps(features, per_image),
                               torch.einsum("bkc,bchw->bkhw", per_image, features))
    with pytest.raises(ValueError, match="input channels"):
        class_activation_maps(features, weight[:, :8])


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_gradcam_at_last_layer_is_a_positive_multiple_of_cam(arch):
    """For GAP + linear, ∂y_k/∂A_c = W_kc / (h·w): Grad-CAM = CAM / (h·w) — equal up to a positive scale."""
    model, _ = random_head_model(arch)
    images = torch.randn(2, 3, 96, 96)
    classes = [0, 5, 17, 79]
    layer = model.net.get_submodule(model.family.feature_layer)
    grad_maps, _ = gradient_maps(lambda x: model(x)[0], images, layer, classes)
    with torch.no_grad():
        _, features = model(images)
        cam = class_activation_maps(features, model.head.weight, classes)
    area = features.shape[-2] * features.shape[-1]
    torch.testing.assert_close(F.relu(grad_maps), F.relu(cam) / area, atol=1e-5, rtol=1e-4)
    assert F.relu(cam).sum() > 0


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_batched_multiclass_gradients_equal_class_by_class(method):
    model, _ = random_head_model("resnet18")
    images = torch.randn(3, 3, 64, 64)
    layer = model.net.layer3  # an inner layer: the gradients are not constant in space
    classes = [3, 9, 40, 41, 60]
    batched, _ = gradient_maps(lambda x: model(x)[0], images, layer, classes, method, chunk=16)
    one_by_one = torch.cat([gradient_maps(lambda x: model(x)[0], images, layer, [k], method)[0] for k in classes], 1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)
    # ... and equal to a plain per-image, per-class autograd computation of the formula
    captured = []
    hook = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = model(images)[0]
    hook.remove()
    activations = captured[0]
    b, k = 1, 40
    (grad,) = torch.autograd.grad(logits[b, k], activations)
    g, a = grad[b], activations[b]
    if method == "gradcam":
        weights = g.mean((-2, -1))
    else:
        alpha = g**2 / torch.where((den := 2 * g**2 + a.sum((-2, -1), keepdim=True) * g**3) != 0, den, 1)
        weights = (alpha * F.relu(g)).sum((-2, -1))
    manual = (weights[:, None, None] * a).sum(0).detach()
    torch.testing.assert_close(batched[b, classes.index(k)], manual, atol=1e-5, rtol=1e-4)


def test_upsample_matches_torch_bilinear():
    maps = torch.randn(6, 7, 9)
    for size in [(480, 640), (7, 9), (3, 4), (1, 1), (333, 17)]:
        ours = upsample_bilinear(maps, size)
        theirs = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_normalize_maps_range_and_constant_maps():
    maps = torch.randn(2, 3, 5, 5)
    maps[0, 1] = 4.0  # constant
    maps[1, 2] = -1.0  # all negative: zero after ReLU
    out = normalize_maps(maps, (20, 30))
    assert out.shape == (2, 3, 20, 30) and torch.isfinite(out).all()
    assert (out[0, 1] == 0).all() and (out[1, 2] == 0).all()
    for b, k in [(0, 0), (1, 0)]:
        assert out[b, k].min() == 0 and out[b, k].max() == pytest.approx(1.0)
    expected = F.relu(F.interpolate(maps[:1, :1], size=(20, 30), mode="bilinear", align_corners=False))[0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=1e-5)
    single = normalize_maps(torch.full((1, 1), 3.0), (1, 1))
    assert single.item() == 0
