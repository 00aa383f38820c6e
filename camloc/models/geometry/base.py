"""What a map geometry is: :class:`MapGeometry` (where each cell of a layer's map is centred in the input), its
errors, and how to run a network up to one layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


class _Reached(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the probe's hook to stop the forward pass once the wanted layer has run."""

    def __init__(self, output: Any):
        super().__init__()
        self.output = output


def layer_output(model: CamModel, layer: str | None, images: Tensor) -> Tensor:
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
