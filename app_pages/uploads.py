"""The uploaded images, one set for every page: each kept once by the hash of its bytes, in upload order.

A file uploader cannot be given a value, and Streamlit empties it when its page is left, so the
images live in session state. The uploader's ``on_change`` (:func:`remember_uploads`) compares the
files the widget holds with those it held at its last change: one change of a widget either adds
files or removes one (its ✕), so a change that does both comes from an uploader emptied by a page
switch, and only adds. An image uploaded on another page has no ✕ here: :func:`remove_upload`
takes one away, :func:`clear_uploads` all of them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st

_UPLOADS = "_uploaded_images"  # {sha1 of the bytes: (name, bytes)}, in upload order
_WIDGET = "_uploader_files"  # {file_id: sha1} of the files the uploader held at its last change
_NEWEST = "_newest_upload"


def digest(data: bytes) -> str:
    """The key an image is kept under: the SHA-1 of its bytes."""
    return hashlib.sha1(data).hexdigest()


def _kept() -> dict[str, tuple[str, bytes]]:
    return st.session_state.setdefault(_UPLOADS, {})


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).suffix``, ``stem (3).suffix``, … when another kept image has that name."""
    stem, dot, suffix = name.rpartition(".")
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{stem} ({count}).{suffix}" if dot else f"{name} ({count})"
    return candidate


def remember_uploads(key: str) -> None:
    """``on_change`` of the file uploader ``key``: add the files it gained to the kept images, drop the one
    its ✕ removed, and note the last image added (:func:`newest_upload`)."""
    files: Any = st.session_state.get(key) or []
    held = {f.file_id: f for f in (files if isinstance(files, list) else [files])}
    before: dict[str, str] = st.session_state.get(_WIDGET, {})
    added = [f for file_id, f in held.items() if file_id not in before]
    gone = [sha for file_id, sha in before.items() if file_id not in held]
    kept = _kept()
    now = {file_id: before.get(file_id) or digest(f.getvalue()) for file_id, f in held.items()}
    if gone and not added:  # the ✕ of a file on this page's uploader
        for sha in set(gone) - set(now.values()):
            kept.pop(sha, None)
    newest = None
    for file in added:
        sha = now[file.file_id]
        if sha not in kept:
            kept[sha] = (unique_name(file.name, {name for name, _ in kept.values()}), file.getvalue())
        newest = kept[sha][0]
    st.session_state[_WIDGET] = now
    st.session_state[_NEWEST] = newest


def newest_upload() -> str | None:
    """The name of the image the last upload added (once: the next call returns ``None``)."""
    return st.session_state.pop(_NEWEST, None)


def uploads() -> list[tuple[str, bytes]]:
    """The images uploaded on any page, ``(name, bytes)`` in upload order."""
    return list(_kept().values())


def remove_upload(name: str) -> None:
    """Take the uploaded image ``name`` away (a button's ``on_click``)."""
    kept = _kept()
    for sha, (kept_name, _) in list(kept.items()):
        if kept_name == name:
            del kept[sha]


def clear_uploads() -> None:
    """Forget every uploaded image (back to the bundled examples)."""
    st.session_state[_UPLOADS] = {}
