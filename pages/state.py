"""Widget state that outlives a page and follows the image: the model, folder and uploads are shared by
all pages, and a class picked for one image stays with that image.

Streamlit drops a widget's value when a run does not draw it (another page) and keeps it when its
options change (another image). :func:`carry` fixes both: called just before a keyed widget is
drawn, it remembers the widget's last value per *context* (e.g. the image and the model) and puts
back the value remembered for the current context, or ``default`` for a context not seen yet.
Widgets given a value this way must be drawn without a ``value``/``index``/``default`` argument.

File uploaders cannot be given a value, so uploads are kept as bytes (:func:`remember_uploads`,
:func:`uploads`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import streamlit as st

_MEMORY = "_carried"
_CONTEXT = "_carried_context"
_UPLOADS = "_uploaded_images"
_NEWEST = "_newest_upload"
MAX_CONTEXTS = 256


def carry(key: str, default: Any, valid: Callable[[Any], bool] | None = None, context: Hashable = ()) -> Any:
    """Give widget ``key`` its value for ``context`` before it is drawn; returns that value.

    ``valid(value)`` rejects a remembered value that no longer fits (e.g. an option that is gone).
    """
    memory: dict[Hashable, Any] = st.session_state.setdefault(_MEMORY, {}).setdefault(key, {})
    contexts: dict[str, Hashable] = st.session_state.setdefault(_CONTEXT, {})
    if key in st.session_state and key in contexts:
        memory[contexts[key]] = st.session_state[key]  # the widget's latest value, for the context it was drawn in
    value = memory.get(context, default)
    if valid is not None and not valid(value):
        value = default
    memory.pop(context, None)
    memory[context] = value  # most recent last, so the oldest contexts are forgotten first
    while len(memory) > MAX_CONTEXTS:
        memory.pop(next(iter(memory)))
    st.session_state[key] = value
    contexts[key] = context
    return value


def options_filter(options: Sequence[Any]) -> Callable[[Any], bool]:
    """A ``valid`` for :func:`carry`: a single value among ``options``, or a list of them."""
    allowed = set(options)
    return lambda value: set(value) <= allowed if isinstance(value, list) else value in allowed


def remember_uploads(key: str) -> None:
    """``on_change`` of the file uploader ``key``: keep the uploaded files' names (made unique) and bytes
    for every page, and note the last file that was not there before (:func:`newest_upload`)."""
    files = st.session_state.get(key) or []
    before = {data for _, data in st.session_state.get(_UPLOADS, [])}
    kept: list[tuple[str, bytes]] = []
    for file in files if isinstance(files, list) else [files]:
        name, count = file.name, 1
        while any(name == other for other, _ in kept):
            count += 1
            stem, dot, suffix = file.name.rpartition(".")
            name = f"{stem} ({count}).{suffix}" if dot else f"{file.name} ({count})"
        kept.append((name, file.getvalue()))
    st.session_state[_UPLOADS] = kept
    added = [name for name, data in kept if data not in before]
    st.session_state[_NEWEST] = added[-1] if added else None


def newest_upload() -> str | None:
    """The name of the image the last upload added (once: the next call returns ``None``)."""
    return st.session_state.pop(_NEWEST, None)


def remembered(key: str, default: Any, valid: Callable[[Any], bool] | None = None, context: Hashable = ()) -> Any:
    """The value :func:`carry` last gave widget ``key`` for ``context`` (``default`` if none, or if not
    ``valid``), for a page that shows a choice made on another page without drawing its widget."""
    memory = st.session_state.get(_MEMORY, {}).get(key, {})
    contexts = st.session_state.get(_CONTEXT, {})
    value = st.session_state[key] if key in st.session_state and contexts.get(key) == context else memory.get(
        context, default)
    return value if valid is None or valid(value) else default


def uploads() -> list[tuple[str, bytes]]:
    """The images uploaded on any page (name, bytes), until replaced or cleared."""
    return list(st.session_state.get(_UPLOADS, []))


def clear_uploads() -> None:
    st.session_state[_UPLOADS] = []
