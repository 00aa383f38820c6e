"""camloc's maps against the two libraries our users know, on real COCO images with the shared
COCO-80 MobileNetV2: pytorch-grad-cam 1.5.7 and torchcam 0.5.0 (test dependencies only).

Every method both sides have is compared with the same model, input, layer and class. Each known
difference is stated where it is tested, and shown to be the *only* difference (camloc's maps equal
the peer's once the peer is given camloc's convention); where a peer departs from the paper, camloc
equals the paper's formula, computed here by plain autograd.

pytorch-grad-cam post-processes every map the same way (ReLU, min-max, ``cv2.resize`` to the input,
min-max again): :func:`pgc_view` applies that to camloc's raw maps, so its outputs compare directly.
torchcam returns raw maps with ``normalized=False`` (after its ReLU for gradient methods).
"""

import json

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
import torchcam.methods as tc
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

from camloc.cam import make_method
from camloc.io.images import load_image
from camloc.localize import Localizer
from camloc.models import load_model
from tests.conftest import COCO80, COCO_MINI, VAL_IMAGES

pytestmark = pytest.mark.realdata
SIZE = 224
DISJOINT = COCO_MINI / "annotations" / "instances_val2017_mini_disjoint.json"


@pytest.fixture(scope="module")
def real():
    """Two unseen val2017 photos at 224 px and, per image, its two most probable classes."""
    model, meta = load_model(COCO80)
    names = [im["file_name"] for im in sorted(json.loads(DISJOINT.read_text())["images"], key=lambda im: im["id"])]
    images = Localizer(model, meta, img_size=SIZE, device="cpu").to_tensor(
        [load_image(VAL_IMAGES / name) for name in names[:2]])
    with torch.no_grad():
        classes = model(images)[0].topk(2, dim=1).indices
    return model, images, classes


@pytest.fixture(scope="module")
def real64(real):
    """The same in float64: Grad-CAM++'s α divides by ``2g² + Σ A·g³``, which comes near 0 at inner layers,
    so float32 rounding of the gradients (batched vs one class) moves some values by ~1 %."""
    _, images, classes = real
    return load_model(COCO80)[0].double(), images.double(), classes


def ours(real, name, **options):
    model, images, classes = real
    return make_method(name, **options).maps(model, images, classes)[0]


def pgc_view(raw: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's own post-processing of one class slot's raw maps ``(B, h, w)``."""
    return scale_cam_image(scale_cam_image(np.maximum(raw.numpy(), 0), (SIZE, SIZE)))


def pgc_maps(real, cls, layer: str, slot: int, **kwargs) -> np.ndarray:
    model, images, classes = real
    with cls(model=model.net, target_layers=[model.net.get_submodule(layer)], **kwargs) as method:
        return method(input_tensor=images, targets=[ClassifierOutputTarget(int(k)) for k in classes[:, slot]])


def torchcam_raw(real, cls, layer, slot: int, normalized: bool = False) -> list[torch.Tensor]:
    model, images, classes = real
    with cls(model.net, layer) as extractor:
        scores = model.net(images)
        return extractor(classes[:, slot].tolist(), scores, normalized=normalized)


def autograd_terms(real, layer: str, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` at ``layer`` and ``g = ∂y_k/∂A`` for each image's class in ``slot``, by plain autograd."""
    model, images, classes = real
    captured = []
    hook = model.net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = model(images)[0]
    hook.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, classes[:, slot:slot + 1]).sum(), captured[0])
    return captured[0].detach(), grads


def gradcampp_formula(a: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): ``α = g² / (2g² + Σ_xy A·g³ + eps)`` (0 where g = 0)."""
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + a.sum((-2, -1), keepdim=True) * g**3 + eps), 0.0)
    return ((alpha * F.relu(g)).sum((-2, -1), keepdim=True) * a).sum(1)


@pytest.mark.parametrize(("name", "peer", "layer"), [
    ("gradcam", pgc.GradCAM, "features"), ("gradcam", pgc.GradCAM, "features.13"),
    ("xgradcam", pgc.XGradCAM, "features.13"), ("hirescam", pgc.HiResCAM, "features.13"),
    ("layercam", pgc.LayerCAM, "features.13"), ("layercam", pgc.LayerCAM, "features.6")])
def test_gradient_maps_equal_pytorch_grad_cam(real, name, peer, layer):
    """Same maps; the only difference is XGrad-CAM's ε = 1e-7 on Σ A (none in camloc), below 1e-5 here."""
    maps = ours(real, name, layer=layer)
    for slot in range(2):
        np.testing.assert_allclose(pgc_maps(real, peer, layer, slot), pgc_view(maps[:, slot]), atol=1e-5)


@pytest.mark.parametrize(("name", "peer", "layer"), [
    ("gradcam", tc.GradCAM, "features"), ("gradcam", tc.GradCAM, "features.13"),
    ("xgradcam", tc.XGradCAM, "features.13"), ("layercam", tc.LayerCAM, "features.13")])
def test_gradient_maps_equal_torchcam(real, name, peer, layer):
    """Same raw maps after ReLU (torchcam applies ReLU to gradient maps); XGrad-CAM: torchcam's ε is 1e-8."""
    maps = ours(real, name, layer=layer)
    for slot in range(2):
        theirs = torchcam_raw(real, peer, layer, slot)[0]
        torch.testing.assert_close(theirs, F.relu(maps[:, slot]), atol=1e-6, rtol=1e-5)


def test_cam_equals_torchcam_before_normalisation_but_torchcam_skips_the_relu(real):
    """Known difference: torchcam's ``CAM`` min-maxes the *signed* map; camloc (like the CAM paper's
    visualisations and every gradient method) applies ReLU first, so negative evidence is not shown as
    weak positive evidence."""
    maps = ours(real, "cam")
    theirs = torchcam_raw(real, tc.CAM, "features", 0)[0]
    torch.testing.assert_close(theirs, maps[:, 0], atol=1e-4, rtol=1e-5)
    normalised = torchcam_raw(real, tc.CAM, "features", 0, normalized=True)[0]
    signed = maps[:, 0] - maps[:, 0].amin((-2, -1), keepdim=True)
    torch.testing.assert_close(normalised, signed / signed.amax((-2, -1), keepdim=True), atol=1e-5, rtol=1e-5)
    assert (maps[:, 0].amin((-2, -1)) < 0).any()  # so ReLU-then-min-max differs from torchcam's view
    relu_first = F.relu(maps[:, 0]) / F.relu(maps[:, 0]).amax((-2, -1), keepdim=True)
    assert (relu_first - normalised).abs().max() > 0.05


@pytest.mark.parametrize("layer", ["features", "features.13"])
def test_gradcampp_equals_the_paper_where_both_peers_depart_from_it(real64, layer):
    """camloc = eq. 19 exactly. pytorch-grad-cam adds ε = 1e-6 to α's denominator: at the pooling layer
    ``g = W/(h·w)`` is ~1e-4, so ``2g²`` ~1e-8 ≪ ε and the maps shrink and change shape. torchcam divides a
    copy made by boolean indexing (``alpha[idx][mask].div_``), so its α stays ``g²``."""
    maps = ours(real64, "gradcampp", layer=layer)
    for slot in range(2):
        a, g = autograd_terms(real64, layer, slot)
        torch.testing.assert_close(maps[:, slot], gradcampp_formula(a, g), atol=1e-9, rtol=1e-7)
        theirs = pgc_maps(real64, pgc.GradCAMPlusPlus, layer, slot)
        np.testing.assert_allclose(theirs, pgc_view(gradcampp_formula(a, g, eps=1e-6)), atol=1e-5)
        assert np.abs(theirs - pgc_view(maps[:, slot])).max() > 0.01  # the ε matters on these real maps
        torchcam = torchcam_raw(real64, tc.GradCAMpp, layer, slot)[0]
        alpha_is_g2 = F.relu(((g**2 * F.relu(g)).sum((-2, -1), keepdim=True) * a).sum(1))
        torch.testing.assert_close(torchcam, alpha_is_g2, atol=1e-12, rtol=1e-7)


def test_eigencam_equals_pytorch_grad_cam_up_to_the_svd_sign(real):
    """Same principal component; known difference: the sign of a singular vector is arbitrary (pytorch-grad-cam
    keeps LAPACK's), camloc signs the map to correlate positively with Σ_c A_c."""
    maps = ours(real, "eigencam", layer="features.13")[:, 0]
    a, _ = autograd_terms(real, "features.13", 0)
    projection = torch.from_numpy(get_2d_projection(a.numpy()))
    sign = torch.where((maps * projection).sum((-2, -1), keepdim=True) < 0, -1.0, 1.0)
    torch.testing.assert_close(maps, sign * projection, atol=1e-4, rtol=1e-3)
    total = a.sum(1)
    assert ((maps * (total - total.mean((-2, -1), keepdim=True))).sum((-2, -1)) >= 0).all()
    theirs = pgc_maps(real, pgc.EigenCAM, "features.13", 0)
    np.testing.assert_allclose(theirs, pgc_view(sign * maps), atol=1e-4)


def normalise_after_upsampling(upsample):
    """torchcam's Score-CAM upsamples masks normalised at the feature grid; this normalises after upsampling."""
    def patched(self, activation):
        up = upsample(self, activation)
        low, high = up.amin((-2, -1), keepdim=True), up.amax((-2, -1), keepdim=True)
        return (up - low) / torch.where(high > low, high - low, 1)
    return patched


def test_scorecam_equals_both_peers_once_they_build_the_paper_masks(real, monkeypatch):
    """Score-CAM's mask is ``H = minmax(Up(A_c))`` (the paper: upsample, then normalise). Known differences:
    pytorch-grad-cam upsamples with ``UpsamplingBilinear2d`` (``align_corners=True``; camloc and torchcam
    use ``False``); torchcam normalises at the feature grid before upsampling. The softmax over channels
    amplifies the small mask differences, so the maps differ visibly — and become equal once each peer is
    given camloc's masks. (A 32-channel layer keeps this test quick: one masked pass per channel.)"""
    maps = ours(real, "scorecam", layer="features.6")
    expected = [pgc_view(maps[:, slot]) for slot in range(2)]
    unpatched = pgc_maps(real, pgc.ScoreCAM, "features.6", 0)
    assert np.abs(unpatched - expected[0]).max() > 0.05
    unpatched_torchcam = torchcam_raw(real, tc.ScoreCAM, "features.6", 0)[0]
    assert (unpatched_torchcam - F.relu(maps[:, 0])).abs().max() > 0.05 * maps[:, 0].abs().max()
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d",
                        lambda size: nn.Upsample(size=size, mode="bilinear", align_corners=False))
    monkeypatch.setattr(tc.ScoreCAM, "_upsample", normalise_after_upsampling(tc.ScoreCAM._upsample))
    for slot in range(2):
        np.testing.assert_allclose(pgc_maps(real, pgc.ScoreCAM, "features.6", slot), expected[slot], atol=1e-4)
        theirs = torchcam_raw(real, tc.ScoreCAM, "features.6", slot)[0]
        torch.testing.assert_close(theirs, F.relu(maps[:, slot]), atol=1e-4, rtol=1e-4)


def test_layercam_fused_equals_torchcam_fusion_with_the_papers_scaling(real, monkeypatch):
    """Fusion = torchcam's ``LayerCAM.fuse_cams`` (tanh(γ·M̂), γ = 2, upsample to the finest grid, maximum).
    Known difference: eq. 9 scales ``M / max M``; torchcam min-maxes first, ``(M − min M) / (max M − min M)``,
    which differs when a layer's map has no zero — as MobileNetV2's last layer's maps here."""
    layers = ["features.6", "features.13", "features"]
    model, images, classes = real
    fused = ours(real, "layercam-fused")
    assert fused.shape[-2:] == (28, 28)  # stride 8: four times finer than the 7×7 feature grid
    torch.testing.assert_close(fused, ours(real, "layercam-fused", layers=tuple(layers)))

    def torchcam_fused(slot):
        with tc.LayerCAM(model.net, layers) as extractor:
            return extractor.fuse_cams(extractor(classes[:, slot].tolist(), model.net(images)))

    assert (torchcam_fused(0) - fused[:, 0]).abs().max() > 0.05
    monkeypatch.setattr(tc.LayerCAM, "_normalize", staticmethod(
        lambda cams, spatial_dims=None, eps=1e-8: cams.div_(cams.amax((-2, -1), keepdim=True) + eps)))
    for slot in range(2):
        torch.testing.assert_close(torchcam_fused(slot), fused[:, slot], atol=1e-5, rtol=1e-4)
