"""torchvision's ImageNet classifiers as COCO models with no training: their weights, downloaded once.

Which file, from where, comes from torchvision's weights API (``get_model_weights(arch).DEFAULT``);
it is cached where torchvision itself caches it (``torch.hub.get_dir()/checkpoints``, i.e.
``$TORCH_HOME/hub/checkpoints``), so one download serves the app and ``python -m train --weights
imagenet``. :func:`download` streams it with a progress callback and checks the SHA-256 prefix in
its file name (torch hub's convention) before the file appears in the cache. The ImageNet head
becomes a COCO head with :func:`camloc.models.derive_coco_head`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from camloc.io.atomic import atomic_output
from camloc.models.cammodel import CamModel, derive_coco_head
from camloc.models.families import ModelError, build_torchvision
from camloc.models.meta import complete_meta

#: ``$CAMLOC_OFFLINE`` set to anything but ``""``/``0``: never try the network (tests, metered links).
OFFLINE_ENV = "CAMLOC_OFFLINE"
CHUNK = 1 << 20
INPUT_SIZE = 448


@dataclass(frozen=True)
class PretrainedWeights:
    """One downloadable weights file: the architecture, its URL and its size in MB (when known)."""

    arch: str
    url: str
    size_mb: float | None = None

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def folder(self) -> Path:
        """The cache folder torchvision uses (``$TORCH_HOME/hub/checkpoints``)."""
        return Path(torch.hub.get_dir()) / "checkpoints"

    @property
    def path(self) -> Path:
        return self.folder / self.file_name

    def is_cached(self) -> bool:
        return self.path.is_file()


def imagenet_weights(arch: str) -> PretrainedWeights:
    """torchvision's default ImageNet weights of ``arch`` (a :class:`ModelError` if it has none)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise ModelError(f"torchvision has no pretrained weights for {arch!r}") from None
    return PretrainedWeights(arch, weights.url, weights.meta.get("_file_size"))


def is_online(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection (nothing is sent); ``False`` under ``$CAMLOC_OFFLINE``."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def download(weights: PretrainedWeights, progress: Callable[[int, int | None], None] | None = None,
             timeout: float = 30.0) -> Path:
    """Download ``weights`` into the cache; ``progress(bytes so far, total or None)`` after each chunk.

    The file appears in the cache only complete and with the SHA-256 prefix its name promises;
    any failure is a :class:`ModelError` that names the file and the folder to put it in by hand.
    """
    expected = torch.hub.HASH_REGEX.search(weights.file_name)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(weights.url, timeout=timeout) as response, \
                atomic_output(weights.path, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if expected and not digest.hexdigest().startswith(expected.group(1)):
                raise ModelError(f"the download of {weights.file_name} is corrupt (SHA-256 mismatch)")
    except ModelError as exc:
        raise ModelError(f"{exc}; {manual_hint(weights)}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not download {weights.url} ({exc.__class__.__name__}: {exc}); "
                         f"{manual_hint(weights)}") from None
    return weights.path


def manual_hint(weights: PretrainedWeights) -> str:
    """What to do by hand: the exact file, where to get it, and the folder to put it in."""
    return f"download {weights.file_name} ({weights.url}) into {weights.folder}"


def load_imagenet_coco(weights: PretrainedWeights) -> tuple[CamModel, dict[str, Any]]:
    """The cached ImageNet classifier with its head mapped to COCO's 80 classes (no training), in eval mode."""
    if not weights.is_cached():
        raise ModelError(f"{weights.arch} weights are not downloaded; {manual_hint(weights)}")
    net = build_torchvision(weights.arch, 1000)
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as exc:
        raise ModelError(f"{weights.path} is not the {weights.arch} ImageNet state_dict ({exc.__class__.__name__}); "
                         f"delete it and download again") from None
    meta = complete_meta({"arch": weights.arch, "num_classes": 1000, "input_size": INPUT_SIZE,
                          "class_names": [f"imagenet {i}" for i in range(1000)],
                          "source": f"torchvision {weights.file_name}, ImageNet head mapped to COCO"})
    model, meta = derive_coco_head(CamModel(net, weights.arch), meta)
    return model.eval(), meta
