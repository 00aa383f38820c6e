"""Where each cell of a network's feature map looks in its input: the geometry that puts a map on its image.

A layer's map of an ``S × S`` input is a grid of cells; cell ``i`` (per axis) is *centred* on input pixel
``offset + stride·i`` (pixel ``p``'s centre at ``p``) — :class:`MapGeometry`. Three ways to know it:

* :func:`analytic_geometry` — from the layers' kernels, strides, paddings and dilations, walked through the
  network's own forward pass (a tensor that carries ``(offset, stride)`` per axis through every convolution
  and pooling: ``offset += stride · ((k − 1)·d/2 − p)``, ``stride *= s``; branches that meet must agree).
  A torchvision ResNet, RegNet, MobileNet or EfficientNet with symmetric padding has offset 0: cell ``i`` is
  centred on pixel ``32·i``, half a cell up-left of where the grid stretched over the image puts it
  (``32·i + 15.5``); DenseNet's 2×2 average pools and ConvNeXt's patchify layers put it at 14 and 15.5.
* :func:`receptive_field_centre` — the centre of a cell's effective receptive field: the centroid of
  ``|∂ Σ_c A_c(i, j) / ∂x|`` at a neutral input. With weights drawn at random (the architecture alone) it is the
  analytic centre (tests/test_geometry.py checks every family camloc supports).
* :func:`measured_geometry` — where a *trained* network's class map puts what it sees (see its docstring):
  a property of the weights, not only of the architecture. The shared MobileNetV2 converted from
  TensorFlow's "SAME" padding sits about a cell up-left of a natively trained torchvision MobileNetV2.

The stride is the analytic one in every case (a shift of the input by one stride moves the map by one cell);
``offset`` is what the weights decide. :func:`model_geometry` caches a model's geometry per (architecture,
layer, input size, weights) and reads it from the checkpoint's metadata when training stored it there.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camloc.cam.frame import MapFrame

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel

#: Per axis ``(offset, stride)`` of a map in input pixels.
Axes = tuple[tuple[float, float], tuple[float, float]]


class GeometryError(ValueError):
    """A network whose map geometry cannot be derived (branches that disagree, an unknown spatial layer)."""


class NarrowMapError(GeometryError):
    """A map too few cells wide to measure where its cells look (its geometry is then the analytic one)."""


@dataclass(frozen=True)
class MapGeometry:
    """Cell ``(i, j)`` of a layer's map is centred on input pixel ``(offset[0] + stride[0]·i, offset[1] + stride[1]·j)``
    (pixel ``p``'s centre at ``p``), for any input size; ``source`` says how ``offset`` was found."""

    stride: tuple[float, float]
    offset: tuple[float, float]
    source: str = "analytic"

    def frame(self, input_size: int | tuple[int, int]) -> MapFrame:
        """The :class:`~camloc.cam.frame.MapFrame` of the map of an ``input_size`` input (the whole image
        stretched to it)."""
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        return MapFrame.of_network(self.offset, self.stride, size)

    def to_json(self) -> dict[str, Any]:
        return {"stride": list(self.stride), "offset": list(self.offset), "source": self.source}

    @classmethod
    def from_json(cls, data: Any, where: str = "map_geometry") -> MapGeometry:
        """A geometry from :meth:`to_json`'s dict; a :class:`GeometryError` naming ``where`` otherwise."""
        def pair(key: str, positive: bool) -> tuple[float, float]:
            value = data.get(key) if isinstance(data, dict) else None
            if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 or not positive) for v in value)):
                raise GeometryError(f"{where}: {key} must be two finite numbers{' > 0' if positive else ''} (y, x), "
                                    f"got {str(value)[:60]}")
            return float(value[0]), float(value[1])
        source = data.get("source", "measured") if isinstance(data, dict) else None
        if not isinstance(source, str):
            raise GeometryError(f"{where}: source must be a string, got {source!r}")
        return cls(pair("stride", True), pair("offset", False), source)


# ----------------------------------------------------------------------------------------------------------
# analytic: kernels, strides, paddings, dilations
# ----------------------------------------------------------------------------------------------------------

def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[-1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _window_axes(axes: Axes, kernel: tuple[int, int], stride: tuple[int, int], padding: Any,
                 dilation: tuple[int, int]) -> Axes:
    """``(offset, stride)`` after a sliding window: output cell ``o`` reads input cells ``s·o − p + d·t``, ``t < k``,
    centred on input cell ``s·o − p + d·(k − 1)/2``."""
    if isinstance(padding, str):  # "same" (stride 1: PyTorch pads (total // 2) before) or "valid"
        padding = tuple(d * (k - 1) // 2 if padding == "same" else 0 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return tuple((offset + step * (d * (k - 1) / 2 - p), step * s)  # type: ignore[return-value]
                 for (offset, step), k, s, p, d in zip(axes, kernel, stride, padding, dilation))


def _convolution(args: tuple, kwargs: dict, axes: Axes) -> Axes:
    weight = _argument(args, kwargs, 1, "weight", None)
    return _window_axes(axes, tuple(weight.shape[-2:]), _pair(_argument(args, kwargs, 3, "stride", 1)),
                        _argument(args, kwargs, 4, "padding", 0), _pair(_argument(args, kwargs, 5, "dilation", 1)))


def _pooling(args: tuple, kwargs: dict, axes: Axes) -> Axes:
    kernel = _pair(_argument(args, kwargs, 1, "kernel_size", None))
    stride = _argument(args, kwargs, 2, "stride", None)
    dilation = kwargs.get("dilation", args[5] if len(args) > 5 and not isinstance(args[5], bool) else 1)
    return _window_axes(axes, kernel, _pair(stride) if stride not in (None, (), []) else kernel,
                        _argument(args, kwargs, 3, "padding", 0), _pair(dilation))


#: Ops that move a map onto another grid, with the rule for their output's geometry (global pooling: none).
_RULES = {"conv2d": _convolution, "max_pool2d": _pooling, "max_pool2d_with_indices": _pooling,
          "avg_pool2d": _pooling}


#: Ops that move a map to another grid and have no rule here (none of camloc's families uses them before its
#: feature layer): a network that does is refused rather than given a wrong geometry. Every other op (activations,
#: normalisations, sums, concatenations, layout changes such as ConvNeXt's permutes) keeps its input's cells.
_UNKNOWN = {"interpolate", "upsample", "upsample_bilinear", "upsample_nearest", "pad", "pixel_shuffle",
            "pixel_unshuffle", "conv_transpose2d", "grid_sample", "fold", "unfold", "lp_pool2d",
            "fractional_max_pool2d", "fractional_max_pool2d_with_indices", "roll"}


class _Traced(Tensor):
    """A tensor that carries its map's ``(offset, stride)`` per axis through every op (see the module docstring)."""

    axes: Axes | None

    @staticmethod
    def wrap(data: Tensor, axes: Axes | None) -> Tensor:
        if axes is None or data.ndim != 4:
            return data
        traced = data.as_subclass(_Traced)
        traced.axes = axes
        return traced

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            spatial = [a for a in _flatten((args, kwargs)) if isinstance(a, _Traced) and min(a.shape[-2:]) > 1]
            if not spatial:
                return _unwrap(out)
            return _map_out(out, _output_axes(func, args, kwargs, spatial, out))


def _output_axes(func: Any, args: tuple, kwargs: dict, spatial: list[_Traced], out: Any) -> Axes | None:
    """The geometry of ``func``'s output from its traced spatial inputs (see :data:`_RULES`)."""
    name = getattr(func, "__name__", str(func))
    axes = spatial[0].axes
    if name in _RULES:
        return _RULES[name](args, kwargs, axes)
    if name.startswith("adaptive_"):
        return None
    grid = tuple(spatial[0].shape[-2:])
    if any(t.axes != axes for t in spatial if tuple(t.shape[-2:]) == grid):
        raise GeometryError(f"{name} joins maps of one grid whose cells sit in different places "
                            f"({sorted({t.axes for t in spatial})}): the network's branches disagree")
    if name in _UNKNOWN:
        raise GeometryError(f"no geometry rule for {name}, which moves a map to another grid")
    return axes


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [leaf for item in obj for leaf in _flatten(item)]
    if isinstance(obj, dict):
        return [leaf for item in obj.values() for leaf in _flatten(item)]
    return [obj]


def _unwrap(out: Any) -> Any:
    if isinstance(out, _Traced):
        return out.as_subclass(Tensor)
    if isinstance(out, (list, tuple)):
        return type(out)(_unwrap(o) for o in out)
    return out


def _map_out(out: Any, axes: Axes | None) -> Any:
    if isinstance(out, Tensor):
        return _Traced.wrap(out.as_subclass(Tensor), axes)
    if isinstance(out, (list, tuple)):
        return type(out)(_map_out(o, axes) for o in out)
    return out


class _Reached(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the probe's hook to stop the forward pass once the wanted layer has run."""

    def __init__(self, output: Any):
        super().__init__()
        self.output = output


def _layer_output(model: CamModel, layer: str | None, images: Tensor) -> Tensor:
    """The output of ``layer`` (default: the feature layer) for ``images``; the rest of the network is skipped."""
    from camloc.cam.base import resolve_layer

    module = resolve_layer(model, layer)

    def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
        raise _Reached(output)

    handle = module.register_forward_hook(stop)
    try:
        model.net(images)
    except _Reached as reached:
        output = reached.output
    else:
        raise GeometryError(f"layer {layer!r} did not run in {model.arch}'s forward pass")
    finally:
        handle.remove()
    if not isinstance(output, Tensor) or output.ndim != 4:
        raise GeometryError(f"layer {layer!r} of {model.arch} does not output a (B, C, h, w) map")
    return output


def analytic_geometry(model: CamModel, layer: str | None = None, input_size: int = 224) -> MapGeometry:
    """``layer``'s geometry from the kernels, strides, paddings and dilations its input passes through (one
    forward pass of a zero ``input_size`` image carrying the geometry; see the module docstring)."""
    parameter = next(model.parameters())
    probe = _Traced.wrap(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype),
                         ((0.0, 1.0), (0.0, 1.0)))
    with torch.inference_mode():
        output = _layer_output(model, layer, probe)
    axes = getattr(output, "axes", None)
    if axes is None:
        raise GeometryError(f"layer {layer!r} of {model.arch}: its map's geometry was lost on the way")
    return MapGeometry((axes[0][1], axes[1][1]), (axes[0][0], axes[1][0]), "analytic")


# ----------------------------------------------------------------------------------------------------------
# effective receptive field: the gradient of one cell's activation at a neutral input
# ----------------------------------------------------------------------------------------------------------

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
        output = _layer_output(model, layer, images)
        for index, (i, j) in enumerate(cells):
            (gradient,) = torch.autograd.grad(output[:, :, i, j].sum(), images, retain_graph=index < len(cells) - 1)
            weight = gradient.detach().abs().sum((0, 1)).double()
            total = weight.sum()
            if not total > 0:
                raise GeometryError(f"cell ({i}, {j}) of {model.arch}'s layer {layer!r} does not depend on the input")
            centres.append(torch.stack([(weight.sum(1) * grid).sum() / total, (weight.sum(0) * grid).sum() / total]))
    return torch.stack(centres)


# ----------------------------------------------------------------------------------------------------------
# measured: where a trained network's class map puts what it sees
# ----------------------------------------------------------------------------------------------------------

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
    fine = (width - 1) * per_cell + 1
    first, second = (F.interpolate(m[:, None].double(), size=(height, fine), mode="bilinear", align_corners=True)[:, 0]
                     for m in (maps, mirrored))

    def shift_of(offset: float) -> float:
        return width - 1 - (input_size - 1 - 2 * offset) / stride

    low_shift = math.ceil(shift_of(-stride) * per_cell)
    high_shift = math.floor(shift_of(stride) * per_cell)
    if high_shift - low_shift < 2 or max(abs(low_shift), abs(high_shift)) >= fine - per_cell:
        raise NarrowMapError(f"a map {width} cells wide is too narrow to measure where its cells look")
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


# ----------------------------------------------------------------------------------------------------------
# a model's geometry: stored in its checkpoint, or measured once and kept
# ----------------------------------------------------------------------------------------------------------

#: Measured geometries of live models: ``{model: {(layer, input size, weights version): geometry}}``.
_MEASURED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int, int], MapGeometry]] = weakref.WeakKeyDictionary()
#: The metadata key a checkpoint keeps its geometries under: a list of ``{"layer", "input_size", "stride", "offset",
#: "source"}``, measured for the checkpoint's own weights.
META_KEY = "map_geometry"


def weights_version(model: nn.Module) -> int:
    """A number that changes whenever any of ``model``'s parameters or buffers is written in place (an optimiser
    step, ``load_state_dict``): measured geometries of older weights are not reused."""
    return sum(t._version for t in (*model.parameters(), *model.buffers()))


def stored_geometry(meta: dict[str, Any] | None, layer: str, input_size: int) -> MapGeometry | None:
    """The geometry a checkpoint's metadata holds for ``layer`` at ``input_size`` (``None`` if it holds none)."""
    for entry in (meta or {}).get(META_KEY, ()):
        if entry.get("layer") == layer and entry.get("input_size") == input_size:
            return MapGeometry.from_json(entry, f"{META_KEY} of {layer} at {input_size}")
    return None


def model_geometry(model: CamModel, layer: str | None, input_size: int, meta: dict[str, Any] | None = None
                   ) -> MapGeometry:
    """``model``'s geometry at ``layer`` (default: the feature layer) for an ``input_size`` input: the one its
    checkpoint's ``meta`` stores, else :func:`measured_geometry`, measured once per model, layer, input size and
    weights and kept while the model lives."""
    layer = layer or model.family.feature_layer
    stored = stored_geometry(meta, layer, input_size)
    if stored is not None:
        return stored
    known = _MEASURED.setdefault(model, {})
    key = (layer, int(input_size), weights_version(model))
    if key not in known:
        try:
            known[key] = measured_geometry(model, int(input_size), layer)
        except NarrowMapError:  # a map of two or three cells has no interior to measure: the architecture's
            known[key] = replace(analytic_geometry(model, layer, int(input_size)), source="analytic (map too small)")
    return known[key]


def geometry_entries(model: CamModel, sizes: Sequence[int], layer: str | None = None) -> list[dict[str, Any]]:
    """What a checkpoint stores under :data:`META_KEY`: ``layer``'s (default: the feature layer's) measured geometry
    at each of ``sizes`` (the input size and the TTA views' sizes)."""
    layer = layer or model.family.feature_layer
    return [{"layer": layer, "input_size": int(size), **model_geometry(model, layer, int(size)).to_json()}
            for size in sorted(set(sizes))]
