"""Class activation maps for many images and many classes at once, on the input's device.

Map methods, one small registered class each (:data:`METHODS`, :func:`make_method`; see
:mod:`camloc.cam.base`), grouped by family:

* from activations (:mod:`~camloc.cam.activation`): ``cam`` (Zhou et al. 2016, ``M_k = Σ_c W_kc A_c``:
  every class in one matmul), ``eigencam`` (the activations' first principal component);
* channel weights from gradients (:mod:`~camloc.cam.gradient`): ``gradcam``, ``gradcampp``, ``xgradcam``;
* per-position weights from gradients (:mod:`~camloc.cam.elementwise`): ``hirescam``, ``layercam`` (any
  layer) and ``layercam-fused`` (several layers, finer than the last feature grid);
* from masked forward passes (:mod:`~camloc.cam.score`): ``scorecam``.

Every method returns *raw* maps ``(B, K, h, w)``: no ReLU, no normalisation. :func:`normalize_maps`
upsamples, applies ReLU and min-max normalises each map to [0, 1].
"""

from camloc.cam.activation import CAM, EigenCAM, class_activation_maps
from camloc.cam.base import DEFAULT_METHOD, METHODS, MapMethod, make_method, register
from camloc.cam.elementwise import HiResCAM, LayerCAM, LayerCAMFused
from camloc.cam.gradient import GradCAM, GradCAMPlusPlus, GradientMethod, XGradCAM, gradient_maps
from camloc.cam.maps import check_finite_maps, normalize_maps, upsample_bilinear
from camloc.cam.score import ScoreCAM

__all__ = [
    "CAM",
    "DEFAULT_METHOD",
    "METHODS",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientMethod",
    "HiResCAM",
    "LayerCAM",
    "LayerCAMFused",
    "MapMethod",
    "ScoreCAM",
    "XGradCAM",
    "check_finite_maps",
    "class_activation_maps",
    "gradient_maps",
    "make_method",
    "normalize_maps",
    "register",
    "upsample_bilinear",
]
