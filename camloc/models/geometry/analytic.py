"""The analytic geometry: a layer's ``(offset, stride)`` from the kernels, strides, paddings and dilations its input
passes through, walked through the network's own forward pass by a tensor that carries it through every op."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camloc.models.geometry.base import Axes, GeometryError, MapGeometry, NarrowMapError, layer_output

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


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


def analytic_geometry(model: CamModel, layer: str | None = None, input_size: int = 224) -> MapGeometry:
    """``layer``'s geometry from the kernels, strides, paddings and dilations its input passes through (one
    forward pass of a zero ``input_size`` image carrying the geometry; see the module docstring)."""
    parameter = next(model.parameters())
    probe = _Traced.wrap(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype),
                         ((0.0, 1.0), (0.0, 1.0)))
    with torch.inference_mode():
        output = layer_output(model, layer, probe)
    axes = getattr(output, "axes", None)
    if axes is None and min(output.shape[-2:]) <= 1:
        raise NarrowMapError(f"layer {layer!r} of {model.arch} makes a one-cell map of a {input_size} px input: "
                             "a cell's place needs at least two")
    if axes is None:
        raise GeometryError(f"layer {layer!r} of {model.arch}: its map's geometry was lost on the way")
    return MapGeometry((axes[0][1], axes[1][1]), (axes[0][0], axes[1][0]), "analytic")
