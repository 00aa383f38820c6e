"""Measured geometries kept on disk between processes: the same weights are measured once per machine, not once per
run (a new app session, every ``python -m eval`` of weights whose checkpoint stores no geometry).

One JSON file per weights digest, ``<folder>/geometry/<sha256>.json``: ``{"version": MEASUREMENT_VERSION,
"entries": [{"layer", "input_size", "stride", "offset", "source"}, ...]}``. The folder is ``$CAMLOC_CACHE_DIR``
(``none``: keep nothing on disk), else ``$XDG_CACHE_HOME/camloc``, else ``~/.cache/camloc``. A file that cannot
be read, or was written by another version of the measurement, counts as absent (and is rewritten); a folder that
cannot be written costs one warning and the next process measures again — the run itself goes on.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock between processes (each may measure once)
    fcntl = None  # type: ignore[assignment]

from camloc.models.geometry.base import GeometryError, MapGeometry

#: The environment variable naming camloc's cache folder (``none``: no cache on disk).
CACHE_ENV = "CAMLOC_CACHE_DIR"
#: Changed whenever :func:`~camloc.models.geometry.measured.measured_geometry` measures differently: older files
#: are then measured again.
MEASUREMENT_VERSION = 1


def cache_folder() -> Path | None:
    """Where measured geometries are kept (``None``: nowhere, ``$CAMLOC_CACHE_DIR=none``)."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() == "none":
        return None
    if chosen:
        return Path(chosen).expanduser() / "geometry"
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "camloc" / "geometry"


def _entries(path: Path) -> list[dict]:
    """The entries of one digest's file; none when it is missing, unreadable or of another version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != MEASUREMENT_VERSION or not isinstance(
            data.get("entries"), list):
        return []
    return [entry for entry in data["entries"] if isinstance(entry, dict)]


def load_geometry(digest: str, layer: str, input_size: int) -> MapGeometry | None:
    """The geometry measured before for weights ``digest`` at ``layer`` and ``input_size``, if one is kept."""
    folder = cache_folder()
    if folder is None:
        return None
    for entry in _entries(folder / f"{digest}.json"):
        if entry.get("layer") == layer and entry.get("input_size") == input_size:
            try:
                return MapGeometry.from_json(entry)
            except GeometryError:
                return None
    return None


def save_geometry(digest: str, layer: str, input_size: int, geometry: MapGeometry) -> None:
    """Keep ``geometry`` for weights ``digest`` at ``layer`` and ``input_size`` (the file replaced atomically: a
    reader sees the old file or the new one, never half of one)."""
    folder = cache_folder()
    if folder is None:
        return
    path = folder / f"{digest}.json"
    kept = [e for e in _entries(path) if not (e.get("layer") == layer and e.get("input_size") == input_size)]
    entries = [*kept, {"layer": layer, "input_size": input_size, **geometry.to_json()}]
    written = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            written = Path(handle.name)
            json.dump({"version": MEASUREMENT_VERSION, "entries": entries}, handle)
        os.replace(written, path)
    except OSError as exc:
        if written is not None:
            written.unlink(missing_ok=True)
        warnings.warn(f"could not keep the measured map geometry in {folder} ({exc.strerror or exc}); it will be "
                      f"measured again next time (set ${CACHE_ENV} to a writable folder, or to none)", stacklevel=2)


@contextmanager
def measuring(digest: str) -> Iterator[None]:
    """Held while weights ``digest`` are measured: another process or thread measuring the same weights waits, then
    finds the geometry on disk (an exclusive ``flock`` on ``<digest>.lock``; nothing where the folder cannot be
    written or the platform has no ``flock``)."""
    folder = cache_folder()
    handle = None
    if folder is not None and fcntl is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / f"{digest}.lock", "a")  # noqa: SIM115 (held across the yield)
        except OSError:
            handle = None
    if handle is None:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock
