"""A model's geometry: the one its checkpoint stores, or measured once per weights (their content: the same weights
loaded twice are measured once; kept on disk, :mod:`~camloc.models.geometry.store`), layer and input size; what a
checkpoint stores."""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from camloc.models.geometry.analytic import analytic_geometry
from camloc.models.geometry.base import GeometryError, MapGeometry, NarrowMapError
from camloc.models.geometry.measured import measured_geometry
from camloc.models.geometry.store import load_geometry, measuring, save_geometry

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


#: The content digest of each live model's weights, per weights version: ``{model: (version, digest)}``.
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[int, str]] = weakref.WeakKeyDictionary()
#: Measured geometries by ``(weights digest, layer, input size)``, the least recently used forgotten past
#: :data:`KEPT_GEOMETRIES` (each a few numbers).
_MEASURED: OrderedDict[tuple[str, str, int], MapGeometry] = OrderedDict()
KEPT_GEOMETRIES = 1024
_LOCK = threading.Lock()  # the app's sessions are threads of one process
#: The metadata key a checkpoint keeps its geometries under: a list of ``{"layer", "input_size", "stride", "offset",
#: "source"}``, measured for the checkpoint's own weights.
META_KEY = "map_geometry"


def weights_version(model: nn.Module) -> int:
    """A number that changes whenever any of ``model``'s parameters or buffers is written in place (an optimiser
    step, ``load_state_dict``): measured geometries of older weights are not reused."""
    return sum(t._version for t in (*model.parameters(), *model.buffers()))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state (names, dtypes, shapes and bytes of every parameter and buffer), computed once per
    weights version."""
    version = weights_version(model)
    known = _DIGESTS.get(model)
    if known is not None and known[0] == version:
        return known[1]
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    _DIGESTS[model] = (version, digest.hexdigest())
    return _DIGESTS[model][1]


def stored_geometry(meta: dict[str, Any] | None, layer: str, input_size: int) -> MapGeometry | None:
    """The geometry a checkpoint's metadata holds for ``layer`` at ``input_size`` (``None`` if it holds none)."""
    for entry in (meta or {}).get(META_KEY, ()):
        if entry.get("layer") == layer and entry.get("input_size") == input_size:
            return MapGeometry.from_json(entry, f"{META_KEY} of {layer} at {input_size}")
    return None


def _kept(key: tuple[str, str, int]) -> MapGeometry | None:
    """The geometry measured for ``key`` (weights digest, layer, input size) in this process, else kept on disk (then
    kept in the process too); ``None`` when it was never measured."""
    with _LOCK:
        found = _MEASURED.get(key)
        if found is not None:
            _MEASURED.move_to_end(key)
            return found
    found = load_geometry(*key)
    if found is not None:
        _keep(key, found)
    return found


def _keep(key: tuple[str, str, int], geometry: MapGeometry) -> None:
    """Keep ``geometry`` in the process, forgetting the least recently used past :data:`KEPT_GEOMETRIES`."""
    with _LOCK:
        _MEASURED[key] = geometry
        while len(_MEASURED) > KEPT_GEOMETRIES:
            _MEASURED.popitem(last=False)


def model_geometry(model: CamModel, layer: str | None, input_size: int, meta: dict[str, Any] | None = None
                   ) -> MapGeometry:
    """``model``'s geometry at ``layer`` (default: the feature layer) for an ``input_size`` input: the one its
    checkpoint's ``meta`` stores, else :func:`measured_geometry`, measured once per weights (by content), layer and
    input size — kept in the process and on disk (:mod:`camloc.models.geometry.store`: once per machine)."""
    layer = layer or model.family.feature_layer
    found = stored_geometry(meta, layer, input_size)
    if found is not None:
        return found
    key = (weights_digest(model), layer, int(input_size))
    found = _kept(key)
    if found is not None:
        return found
    with measuring(key[0]):
        found = load_geometry(*key)  # measured by another process or session while this one waited
        if found is None:
            found = _measured_or_larger(model, layer, key[2])
            save_geometry(*key, found)
    _keep(key, found)
    return found


def known_geometry(model: CamModel, layer: str | None, input_size: int, meta: dict[str, Any] | None = None) -> bool:
    """Whether :func:`model_geometry` has ``model``'s geometry at hand (stored in ``meta``, measured in this process
    or kept on disk) — ``False``: asking for it measures it (a few seconds to a minute on a CPU)."""
    layer = layer or model.family.feature_layer
    return (stored_geometry(meta, layer, input_size) is not None
            or _kept((weights_digest(model), layer, int(input_size))) is not None)


#: How many times its size an input too small to measure may be enlarged to measure the offset there.
LARGEST_FACTOR = 8


def _measured_or_larger(model: CamModel, layer: str, input_size: int) -> MapGeometry:
    """:func:`measured_geometry` at ``input_size``; a map too few cells wide to measure takes the offset measured at
    the smallest multiple of the size that can be (the weights' offset is the same number of input pixels at every
    size: the demo model's measured 16.5 / 14.5, 16.0 / 15.8 and 16.5 / 14.9 px at 240, 320 and 400). When none can
    be measured — maps too small at every multiple, or maps with no mirror symmetry to find (an untrained or barely
    trained network) — the analytic geometry, at the smallest multiple whose map keeps one (a 1-cell map has
    none), with the reason in its ``source``."""
    reason = "map too small to measure"
    for factor in range(1, LARGEST_FACTOR + 1):
        try:
            found = measured_geometry(model, input_size * factor, layer)
        except NarrowMapError:
            continue
        except GeometryError as exc:
            reason = str(exc)
            break
        return found if factor == 1 else replace(found, source=f"measured at {input_size * factor} px")
    for factor in range(1, LARGEST_FACTOR + 1):
        try:
            return replace(analytic_geometry(model, layer, input_size * factor), source=f"analytic ({reason})")
        except GeometryError:
            continue
    return replace(analytic_geometry(model, layer, input_size), source=f"analytic ({reason})")  # raises: says why


def geometry_entries(model: CamModel, sizes: Sequence[int], layer: str | None = None) -> list[dict[str, Any]]:
    """What a checkpoint stores under :data:`META_KEY`: ``layer``'s (default: the feature layer's) measured geometry
    at each of ``sizes`` (the input size and the TTA views' sizes)."""
    layer = layer or model.family.feature_layer
    return [{"layer": layer, "input_size": int(size), **model_geometry(model, layer, int(size)).to_json()}
            for size in sorted(set(sizes))]
