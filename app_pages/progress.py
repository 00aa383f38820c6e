"""A progress bar that follows the network while a page computes maps: it counts the images the model
sees in this script's thread (Score-CAM's masked images too) and says how many of how many are done."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


@contextmanager
def passes_progress(model: nn.Module, where: Any, what: str, total: int) -> Iterator[None]:
    """Within the block, ``where`` shows a bar of the network passes ``model`` has run out of ``total`` (each
    image of a batch one pass), titled ``what``; the bar goes when the block ends. Passes other sessions'
    threads run through the same model are not counted."""
    bar = where.progress(0.0, text=f"{what}: starting ({total} network passes)")
    thread = threading.get_ident()
    done = 0

    def count(_module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        nonlocal done
        if threading.get_ident() != thread:
            return
        done += len(inputs[0])
        bar.progress(min(done / total, 1.0), text=f"{what}: {min(done, total)} of {total} network passes")

    handle = model.register_forward_hook(count)
    try:
        yield
    finally:
        handle.remove()
        bar.empty()
