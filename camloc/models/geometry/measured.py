"""Measured geometries: the centre of a cell's effective receptive field, and where a trained network's class maps put
what it sees (the offset about which they are mirror-symmetric on random stimuli)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from camloc.models.geometry.analytic import analytic_geometry
from camloc.models.geometry.base import GeometryError, MapGeometry, NarrowMapError, layer_output

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


def receptive_field_centre(model: CamModel, layer: str | None, input_size: int, cells: Sequence[tuple[int, int]],
                           samples: int = 4, seed: int = 0) -> Tensor:
    """float64 ``(len(cells), 2)``: the input position ``(y, x)`` each cell's effective receptive field is centred
    on — the centroid of ``|∂ Σ_c A_c(i, j) / ∂x|`` (summed over colour channels and ``samples`` neutral inputs:
    standard normal noise around the mean image, in the normalised space the network reads; an all-zero input
    leaves a randomly initialised ReLU network without gradient). One backward pass per cell; ``model`` in eval
    mode."""
    parameter = next(model.parameters())
    noise = torch.randn(samples, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    images = noise.to(parameter.device, parameter.dtype).requires_grad_(True)
    grid = torch.arange(input_size, dtype=torch.float64, device=parameter.device)
    centres = []
    with torch.enable_grad():
        output = layer_output(model, layer, images)
        for index, (i, j) in enumerate(cells):
            (gradient,) = torch.autograd.grad(output[:, :, i, j].sum(), images, retain_graph=index < len(cells) - 1)
            weight = gradient.detach().abs().sum((0, 1)).double()
            total = weight.sum()
            if not total > 0:
                raise GeometryError(f"cell ({i}, {j}) of {model.arch}'s layer {layer!r} does not depend on the input")
            centres.append(torch.stack([(weight.sum(1) * grid).sum() / total, (weight.sum(0) * grid).sum() / total]))
    return torch.stack(centres)


#: Random stimuli per measurement, and how coarse their structure is (fractions of the input side).
STIMULI, STIMULUS_SCALES = 48, (8, 16, 32)
#: Samples per cell of the fine grid the two maps are compared on (a shift of one sample: s/32 px of offset).
SAMPLES_PER_CELL = 16


def stimuli(count: int, size: int, seed: int = 0) -> Tensor:
    """``(count, 3, size, size)`` smooth random images in the network's normalised space: Gaussian noise on a grid
    ``size/8``, ``size/16`` or ``size/32`` cells a side, bicubic-upsampled, scaled to unit deviation. They have
    no preferred place, side or orientation, so a map of them is mirror-symmetric on average about where its
    cells really look."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index in range(count):
        side = max(2, size // STIMULUS_SCALES[index % len(STIMULUS_SCALES)])
        coarse = torch.randn(1, 3, side, side, generator=generator)
        images.append(F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False))
    batch = torch.cat(images)
    return batch / batch.flatten(1).std(1).view(-1, 1, 1, 1)


def shift_range(width: int, stride: float, input_size: int) -> tuple[int, int]:
    """The shifts (in 1/:data:`SAMPLES_PER_CELL` cell) :func:`mirror_offset` searches for a map ``width`` cells wide:
    those of offsets from ``−stride`` to ``+stride``; :class:`NarrowMapError` when the map is too narrow for them."""
    per_cell = SAMPLES_PER_CELL
    fine = (width - 1) * per_cell + 1

    def shift_of(offset: float) -> float:
        return width - 1 - (input_size - 1 - 2 * offset) / stride

    low_shift, high_shift = math.ceil(shift_of(-stride) * per_cell), math.floor(shift_of(stride) * per_cell)
    if high_shift - low_shift < 2 or max(abs(low_shift), abs(high_shift)) >= fine - per_cell:
        raise NarrowMapError(f"a map {width} cells wide is too narrow to measure where its cells look")
    return low_shift, high_shift


def mirror_offset(maps: Tensor, mirrored: Tensor, stride: float, input_size: int) -> float:
    """The offset ``a`` (input pixels) of the last axis's cells about which ``maps`` and ``mirrored`` (maps of the
    mirrored inputs, flipped back; both ``(B, h, w)``) are one another's mirror image.

    If cell ``u`` is centred on pixel ``a + s·u``, what ``maps`` holds at cell ``u`` the flipped-back ``mirrored``
    holds at cell ``u + d`` with ``d = w − 1 − (S − 1 − 2a)/s``. The shift ``d`` is the one that maximises the mean
    Pearson correlation of ``maps(u)`` and ``mirrored(u + d)`` over their overlap (the cells read linearly between
    centres at 1/:data:`SAMPLES_PER_CELL` cell, for offsets from ``−s`` to ``+s``, refined by a parabola through
    the best three); only cells are compared, never the image's borders."""
    height, width = maps.shape[-2:]
    per_cell = SAMPLES_PER_CELL
    low_shift, high_shift = shift_range(width, stride, input_size)
    fine = (width - 1) * per_cell + 1
    first, second = (F.interpolate(m[:, None].double(), size=(height, fine), mode="bilinear", align_corners=True)[:, 0]
                     for m in (maps, mirrored))
    from camloc.evaluation.flip import pearson

    scores = []
    for shift in range(low_shift, high_shift + 1):
        a = first[..., max(0, -shift):fine - max(0, shift)].reshape(len(maps), -1)
        b = second[..., max(0, shift):fine + min(0, shift)].reshape(len(maps), -1)
        scores.append(float(pearson(a, b).mean()))
    best = max(range(len(scores)), key=scores.__getitem__)
    if best in (0, len(scores) - 1):
        raise GeometryError(f"the mirrored maps fit best at the edge of the search (offsets ±{stride:g} px): "
                            "the map's geometry could not be measured")
    low, mid, high = scores[best - 1:best + 2]
    curvature = low - 2 * mid + high
    shift = (low_shift + best + (0.5 * (low - high) / curvature if curvature < 0 else 0.0)) / per_cell
    return (input_size - 1 - stride * (width - 1 - shift)) / 2


def _class_maps(model: CamModel, layer: str | None, images: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
    """ReLU'd maps ``(B, h, w)`` of each image's class ``classes`` (default: its most probable one) and that class:
    CAM at the feature layer, LayerCAM at any other layer."""
    from camloc.cam import make_method

    feature = layer is None or layer == model.family.feature_layer
    if classes is None:
        with torch.inference_mode():
            classes = model(images)[0].argmax(1)
    method = make_method("cam") if feature else make_method("layercam", layer=layer)
    maps, _ = method.maps(model, images, classes[:, None])
    return maps[:, 0].float().clamp(min=0), classes


def measured_geometry(model: CamModel, input_size: int, layer: str | None = None, count: int = STIMULI,
                      seed: int = 0, batch: int = 8) -> MapGeometry:
    """Where ``model``'s class maps put what it sees, from the model itself: per axis, the offset about which its
    maps are mirror-symmetric.

    For ``count`` random :func:`stimuli` ``x``, the map ``M`` of ``x``'s most probable class (CAM; LayerCAM at a
    layer other than the feature layer), the map ``M_x`` of the horizontally mirrored ``x`` flipped back and
    ``M_y`` of the vertically mirrored one: the offset ``a`` (cell ``u`` centred on pixel ``a + s·u``) about which
    ``M`` and ``M_x`` are one another's mirror image (:func:`mirror_offset`, pooled over the stimuli; ``y``
    likewise with ``M_y``). The stride ``s`` is the analytic one.
    """
    analytic = analytic_geometry(model, layer, input_size)
    parameter = next(model.parameters())
    images = stimuli(count, input_size, seed).to(parameter.device, parameter.dtype)
    with torch.inference_mode():  # a map too narrow to measure is known from one pass, before the stimuli's
        grid = layer_output(model, layer, images[:1]).shape[-2:]
    for cells, stride in zip(grid, analytic.stride):
        shift_range(cells, stride, input_size)
    plain, across, down = [], [], []
    for start in range(0, count, batch):
        x = images[start:start + batch]
        maps, classes = _class_maps(model, layer, x, None)
        plain.append(maps)
        across.append(_class_maps(model, layer, x.flip(-1), classes)[0].flip(-1))
        down.append(_class_maps(model, layer, x.flip(-2), classes)[0].flip(-2))
    maps, across, down = torch.cat(plain), torch.cat(across), torch.cat(down)
    offset = (mirror_offset(maps.transpose(1, 2), down.transpose(1, 2), analytic.stride[0], input_size),
              mirror_offset(maps, across, analytic.stride[1], input_size))
    return MapGeometry(analytic.stride, offset, "measured")
