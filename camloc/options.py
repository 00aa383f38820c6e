"""Options of a registered piece (a box recipe, a map method): the one check both registries share."""

from __future__ import annotations

from typing import Any


def known_options(kind: str, cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without ``None`` values; an option that ``cls`` (a registered dataclass with ``name`` and
    ``parameters()``) does not have is a ``ValueError`` naming the ``kind``, the piece and its options."""
    given = {k: v for k, v in options.items() if v is not None}
    known = cls.parameters()
    unknown = sorted(set(given) - set(known))
    if unknown:
        listed = ", ".join(known) or "none"
        raise ValueError(f"{kind} {cls.name!r} has no option {unknown[0]!r}; its options are {listed}")
    return given
