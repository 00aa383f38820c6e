"""Widget state that outlives a page and follows the image: the model and folder are shared by all pages,
and a class picked for one image stays with that image (the uploads: :mod:`app_pages.uploads`).

Streamlit drops a widget's value when a run does not draw it (another page) and keeps it when its
options change (another image). :func:`carry` fixes both: called just before a keyed widget is
drawn, it remembers the widget's last value per *context* (e.g. the image and the model) and puts
back the value remembered for the current context, or ``default`` for a context not seen yet.
Widgets given a value this way must be drawn without a ``value``/``index``/``default`` argument.
A widget of one page only keeps its value across page switches with ``persist_state="session"``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import streamlit as st

_MEMORY = "_carried"
_CONTEXT = "_carried_context"
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


def remembered(key: str, default: Any, valid: Callable[[Any], bool] | None = None, context: Hashable = ()) -> Any:
    """The value :func:`carry` last gave widget ``key`` for ``context`` (``default`` if none, or if not
    ``valid``), for a page that shows a choice made on another page without drawing its widget."""
    memory = st.session_state.get(_MEMORY, {}).get(key, {})
    contexts = st.session_state.get(_CONTEXT, {})
    value = st.session_state[key] if key in st.session_state and contexts.get(key) == context else memory.get(
        context, default)
    return value if valid is None or valid(value) else default
