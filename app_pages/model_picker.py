"""The sidebar's model picker, shared by the image pages: the bundled demo model, checkpoints under a
folder, and torchvision's ImageNet models with the ImageNet→COCO head (downloaded on first use when
the machine is online, with a progress bar; offline, the caption says which file to put where)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from app_pages.state import carry
from camloc.demo import DEMO_CHECKPOINT
from camloc.detector import checkpoint_kind, load_any
from camloc.models import DETECTOR_KIND, CamModel, ModelError, pretrained

TORCHVISION_MODELS = {"torchvision ResNet-50 (ImageNet → COCO)": "resnet50",
                      "torchvision MobileNetV2 (ImageNet → COCO)": "mobilenet_v2"}
DEMO_LABEL = "Demo: synthetic shapes (offline, bundled)"
DEMO_KEY = f"file:{DEMO_CHECKPOINT}"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker: a label, a stable key, whether it can be chosen now, a caption,
    and for torchvision's models their weights file."""

    label: str
    key: str
    available: bool
    hint: str = ""
    weights: pretrained.PretrainedWeights | None = None


@st.cache_data(ttl=60, show_spinner=False)
def online(url: str) -> bool:
    """:func:`camloc.models.pretrained.is_online`, asked at most once a minute."""
    return pretrained.is_online(url)


def checkpoint_folder() -> Path:
    """Where the model picker looks for checkpoints by default: ``$CAMLOC_CHECKPOINTS``, else ``runs/``."""
    return Path(os.environ.get("CAMLOC_CHECKPOINTS", "runs"))


def model_choices(folder: Path) -> list[ModelChoice]:
    """The demo model, checkpoints under ``folder`` (``*.pt``/``*.pth``), and torchvision ImageNet models."""
    choices = [ModelChoice(DEMO_LABEL, DEMO_KEY, DEMO_CHECKPOINT.is_file())]
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".pt", ".pth") and p.is_file()):
            choices.append(ModelChoice(f"{path.relative_to(folder)}{detector_mark(str(path), path.stat().st_mtime)}",
                                       f"file:{path.resolve()}", True))
    for label, arch in TORCHVISION_MODELS.items():
        weights = pretrained.imagenet_weights(arch)
        if weights.is_cached():
            choices.append(ModelChoice(label, f"torchvision:{arch}", True, weights=weights))
        elif online(weights.url):
            size = f"{weights.size_mb:.0f} MB" if weights.size_mb else "its weights"
            choices.append(ModelChoice(label, f"torchvision:{arch}", True, f"downloads {size} once when chosen",
                                       weights))
        else:
            choices.append(ModelChoice(label, f"torchvision:{arch}", False, weights=weights))
    return choices


@st.cache_data(max_entries=512, show_spinner=False)
def detector_mark(path: str, mtime: float) -> str:
    """`` (detector)`` after a detector checkpoint's label (a file that cannot be read: nothing; choosing it says
    why)."""
    try:
        return " (detector)" if checkpoint_kind(path) == DETECTOR_KIND else ""
    except ModelError:
        return ""


def offline_caption(choices: list[ModelChoice]) -> str | None:
    """One line for the torchvision models that cannot be downloaded now: which files, into which folder."""
    missing = [c for c in choices if not c.available and c.weights is not None]
    if not missing:
        return None
    models = " and ".join(c.label.split(" (")[0].removeprefix("torchvision ") for c in missing)
    files = " and ".join(f"[{c.weights.file_name}]({c.weights.url})" for c in missing)
    return f"Offline: to use torchvision's {models} (ImageNet → COCO), put {files} into `{missing[0].weights.folder}`."


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def load_choice(key: str, mtime: float) -> tuple[CamModel, dict[str, Any]]:
    """Load a model by key (``file:PATH`` or ``torchvision:ARCH``); ``mtime`` invalidates on change."""
    kind, _, value = key.partition(":")
    if kind == "file":
        return load_any(value)  # a classifier, or a detector (meta kind: detector; app_pages/detector_view.py)
    return pretrained.load_imagenet_coco(pretrained.imagenet_weights(value))


def model_mtime(key: str) -> float:
    kind, _, value = key.partition(":")
    path = Path(value) if kind == "file" else pretrained.imagenet_weights(value).path
    return path.stat().st_mtime if path.exists() else 0.0


def fetch_weights(weights: pretrained.PretrainedWeights) -> None:
    """Download a torchvision model's weights with a progress bar (a :class:`ModelError` on failure)."""
    bar = st.progress(0.0, text=f"Downloading {weights.file_name}…")

    def show(done: int, total: int | None) -> None:
        of_total = f" of {total / 2**20:.1f}" if total else ""
        bar.progress(min(done / total, 1.0) if total else 0.0,
                     text=f"Downloading {weights.file_name}: {done / 2**20:.1f}{of_total} MB")

    try:
        pretrained.download(weights, show)
    finally:
        bar.empty()


_CHOSEN = "_model_key"  # the key of the model the user chose last, on any page
_LABELS = "_model_labels"  # {label: key} of the picker as last drawn
_IN_USE = "_model_in_use"  # (key, label) of the model the last run used


def _chosen() -> None:
    """``on_change`` of the picker: the user chose the model of this label."""
    st.session_state[_CHOSEN] = st.session_state.get(_LABELS, {}).get(st.session_state.get("model_label"))


def kept_choice(key: str | None, usable: list[ModelChoice]) -> ModelChoice | None:
    """The model chosen before, as a choice of its own when the folder now shown does not list it (it stays
    the model until the user picks another); ``None`` when it is listed, or is a file that is gone."""
    if key is None or any(c.key == key for c in usable):
        return None
    kind, _, value = key.partition(":")
    if kind != "file" or not Path(value).is_file():
        return None
    return ModelChoice(f"{Path(value).name} (from {Path(value).parent})", key, True)


def say_model_change(choice: ModelChoice) -> None:
    """One line when the model differs from the one the last run used: which, and why if the user did not
    pick it."""
    before = st.session_state.get(_IN_USE)
    st.session_state[_IN_USE] = (choice.key, choice.label)
    if before is None or before[0] == choice.key:
        return
    asked = st.session_state.get(_CHOSEN) in (None, choice.key)
    why = "" if asked else f" ({before[1]} is no longer available)"
    st.toast(f"Model: now {choice.label}, was {before[1]}{why}.", icon=":material/swap_horiz:")


def pick_model(where=st.sidebar) -> tuple[str, CamModel, dict[str, Any]] | None:
    """The model picker; returns ``(key, model, meta)`` or shows in one line why nothing can be loaded. The
    model chosen stays chosen on every page, whatever folder is shown, until the user picks another (or its
    file is gone). The key names the file and its modification time, so the cached maps of a checkpoint
    overwritten in place (a new training epoch) are not taken for the new one's."""
    carry("checkpoint_folder", str(checkpoint_folder()))
    folder = Path(where.text_input("Checkpoint folder", key="checkpoint_folder",
                                   help="*.pt / *.pth files below this folder are offered (camloc checkpoints or "
                                        "state_dicts with a JSON sidecar)"))
    choices = model_choices(folder)
    usable = [c for c in choices if c.available]
    kept = kept_choice(st.session_state.get(_CHOSEN), usable)
    usable += [kept] if kept else []
    if not usable:
        st.error("No model is available: the bundled demo checkpoint is missing and no checkpoint was found. "
                 f"Put a checkpoint under {folder} or train one with `python -m train`.")
        return None
    keys = [c.key for c in usable]
    chosen = st.session_state.get(_CHOSEN)
    choice = usable[keys.index(chosen)] if chosen in keys else usable[0]
    st.session_state[_LABELS] = {c.label: c.key for c in usable}
    st.session_state["model_label"] = choice.label
    where.selectbox("Model", [c.label for c in usable], key="model_label", on_change=_chosen)
    for c in choices:
        if c.hint:
            where.caption(f"{c.label}: {c.hint}")
    offline = offline_caption(choices)
    if offline:
        where.caption(offline)
    say_model_change(choice)
    try:
        if choice.weights is not None and not choice.weights.is_cached():
            fetch_weights(choice.weights)
        mtime = model_mtime(choice.key)
        model, meta = load_choice(choice.key, mtime)
    except (ModelError, OSError, RuntimeError) as exc:
        st.error(f"Cannot load {choice.label}: {exc}")
        return None
    return f"{choice.key}@{mtime}", model, meta
