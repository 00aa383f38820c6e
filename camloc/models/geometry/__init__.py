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

from camloc.models.geometry.analytic import analytic_geometry
from camloc.models.geometry.base import GeometryError, MapGeometry, NarrowMapError
from camloc.models.geometry.cache import (
    META_KEY,
    geometry_entries,
    known_geometry,
    model_geometry,
    stored_geometry,
    weights_version,
)
from camloc.models.geometry.measured import measured_geometry, mirror_offset, receptive_field_centre, stimuli

__all__ = ["META_KEY", "GeometryError", "MapGeometry", "NarrowMapError", "analytic_geometry", "geometry_entries",
           "known_geometry", "measured_geometry", "mirror_offset", "model_geometry", "receptive_field_centre",
           "stimuli", "stored_geometry", "weights_version"]
