"""The map methods' registry and the pieces every method shares.

A *map method* turns a normalised batch of images into raw class maps. Methods are small frozen
dataclasses registered under a name (:data:`METHODS`), like the box recipes: the Localizer,
``python -m eval --method``, the app and ``bench/`` pick them with :func:`make_method`. A new method
is one decorated class whose docstring states its formula.

:meth:`MapMethod.maps` takes a :class:`~camloc.models.CamModel` in eval mode, images ``(B, 3, H, W)``
on its device and the classes wanted — ``None`` (every class), a ``(k,)`` index tensor shared by
the batch, or ``(B, k)`` indices per image — and returns ``(raw maps (B, k, h, w), logits (B, K))``:
no ReLU, no normalisation (:func:`camloc.cam.normalize_maps` does both for every method alike).

Cost: a ``per_class`` method runs one backward pass per class (batched over the images and over
``chunk`` classes), so callers gate classes before asking for maps; a ``masked_passes`` method runs
one forward pass per feature channel (shared by every class), bounded by its ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from camloc.options import known_options

if TYPE_CHECKING:
    from camloc.models.cammodel import CamModel


@dataclass(frozen=True)
class MapMethod:
    """Base of every map method: its name, its cost class and its one step, :meth:`maps`."""

    name: ClassVar[str] = ""
    #: What the app and reports call it.
    label: ClassVar[str] = ""
    #: One backward pass per class: gate classes before asking for maps.
    per_class: ClassVar[bool] = False
    #: One forward pass of a masked image per feature channel (every class from the same passes).
    masked_passes: ClassVar[bool] = False
    #: Tens of forward-pass equivalents per image or more (for every class of a COCO model): an interactive
    #: caller asks for the class it shows only (a ``per_class`` method) or caps the work (Score-CAM).
    costly: ClassVar[bool] = False
    #: The same map for every class (the method does not look at the head).
    class_agnostic: ClassVar[bool] = False

    def maps(self, model: CamModel, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(raw maps (B, k, h, w), logits (B, K))`` of ``classes`` (see the module docstring)."""
        raise NotImplementedError

    def map_layer(self, model: CamModel) -> str | None:
        """The layer whose grid the maps are on (``None``: the feature layer), whose geometry puts them on the image."""
        return getattr(self, "layer", None)

    def check(self, model: CamModel) -> None:
        """A ``ValueError`` naming a ``layer`` / ``layers`` option that ``model`` does not have."""
        for key in ("layer", "layers"):
            value = getattr(self, key, None)
            for name in [value] if isinstance(value, str) else value or []:
                resolve_layer(model, name)

    def with_options(self, **options: Any) -> MapMethod:
        """The same method with some parameters changed (``None`` values are ignored)."""
        given = known_options("map method", type(self), options)
        return replace(self, **given) if given else self

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter names and their defaults."""
        return {f.name: f.default for f in fields(cls)}


METHODS: dict[str, type[MapMethod]] = {}
#: The method the Localizer, the eval CLI and the app use unless told otherwise.
DEFAULT_METHOD = "cam"


def register(name: str, label: str) -> Callable[[type[MapMethod]], type[MapMethod]]:
    """Class decorator: make a map method selectable as ``name`` (shown as ``label``)."""
    def add(cls: type[MapMethod]) -> type[MapMethod]:
        if name in METHODS:
            raise ValueError(f"map method {name!r} is registered twice")
        cls.name, cls.label = name, label
        METHODS[name] = cls
        return cls
    return add


def make_method(name: str | MapMethod, **options: Any) -> MapMethod:
    """The method registered as ``name`` with ``options`` (``None`` values keep the defaults)."""
    if isinstance(name, MapMethod):
        return name.with_options(**options)
    if name not in METHODS:
        raise ValueError(f"unknown map method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    return cls(**known_options("map method", cls, options))


def check_positive(value: Any, what: str) -> None:
    """A ``ValueError`` unless ``value`` is a positive integer (``what`` names the option)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def class_slots(classes: Sequence[int] | Tensor | None, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """``(B, k)`` class indices per image from ``None`` (all), ``(k,)`` (shared) or ``(B, k)``; a ``ValueError``
    for an index outside ``[0, num_classes)`` or a per-image table of the wrong batch size."""
    if classes is None:
        return torch.arange(num_classes, device=device).expand(batch, num_classes)
    index = torch.as_tensor(classes, dtype=torch.long, device=device)
    if index.ndim > 2 or (index.ndim == 2 and index.shape[0] != batch):
        raise ValueError(f"classes must be (k,) shared or ({batch}, k) per image, got shape {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes}), got {index.flatten().tolist()[:8]}")
    return index.reshape(1, -1).expand(batch, -1) if index.ndim < 2 else index


def resolve_layer(model: CamModel, name: str | None) -> nn.Module:
    """The submodule ``name`` of ``model.net`` (default: the feature layer that global pooling reads)."""
    name = name or model.family.feature_layer
    try:
        return model.net.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{model.arch} has no layer {name!r}; name a module of model.net.named_modules(), "
                         f"e.g. its feature layer {model.family.feature_layer!r}") from None


def forward_capturing(forward: Callable[[Tensor], Tensor], images: Tensor,
                      layers: Sequence[nn.Module]) -> tuple[Tensor, list[Tensor]]:
    """One forward pass of ``forward`` (images → logits): ``(logits (B, K), the output of each of ``layers``)``."""
    captured: list[Tensor | None] = [None] * len(layers)

    def keep(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            captured[index] = output
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        logits = forward(images)
    finally:
        for handle in handles:
            handle.remove()
    if any(c is None or not isinstance(c, Tensor) or c.ndim != 4 for c in captured):
        raise ValueError("a chosen layer did not run in the forward pass or does not output a (B, C, h, w) map")
    return logits, captured  # type: ignore[return-value]


def pick_classes(per_class: Tensor, slots: Tensor) -> Tensor:
    """``per_class (B, K, …)`` → ``(B, k, …)``: row ``slots[b, j]`` of image ``b`` at position ``j``."""
    index = slots.reshape(*slots.shape, *([1] * (per_class.ndim - 2))).expand(-1, -1, *per_class.shape[2:])
    return torch.gather(per_class, 1, index)
