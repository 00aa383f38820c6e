"""What the app's pages share: model choices, cached loading and forward passes, friendly errors.

The forward pass is cached on the raw uploaded bytes and the model's key (never on decoded
arrays), so moving a slider re-derives maps and boxes from the cached analysis without running
the network again. ``st.session_state["forward_passes"]`` counts real forward passes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from camloc.demo import DEMO_CHECKPOINT, EXAMPLES, example_images
from camloc.images import ImageError, load_image
from camloc.localize import Analysis, Localizer
from camloc.models import CamModel, ModelError, build_torchvision, complete_meta, derive_coco_head, load_model

METHODS = {"CAM": ("cam", False), "Grad-CAM": ("gradcam", False), "Grad-CAM++": ("gradcampp", False),
           "TTA-CAM": ("cam", True)}
TORCHVISION_MODELS = {"torchvision ResNet-50 (ImageNet → COCO)": "resnet50",
                      "torchvision MobileNetV2 (ImageNet → COCO)": "mobilenet_v2"}
DEMO_LABEL = "Demo: synthetic shapes (offline, bundled)"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker: a label, a stable key, and whether it can be loaded now."""

    label: str
    key: str
    available: bool
    hint: str = ""


def _torchvision_cached(arch: str) -> Path | None:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None


def checkpoint_folder() -> Path:
    """Where the model picker looks for checkpoints: ``$CAMLOC_CHECKPOINTS``, else ``runs/``."""
    return Path(os.environ.get("CAMLOC_CHECKPOINTS", "runs"))


def model_choices(folder: Path) -> list[ModelChoice]:
    """The demo model, checkpoints under ``folder`` (``*.pt``/``*.pth``), and torchvision ImageNet models."""
    choices = [ModelChoice(DEMO_LABEL, f"file:{DEMO_CHECKPOINT}", DEMO_CHECKPOINT.is_file())]
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".pt", ".pth") and p.is_file()):
            choices.append(ModelChoice(f"{path.relative_to(folder)}", f"file:{path.resolve()}", True))
    for label, arch in TORCHVISION_MODELS.items():
        cached = _torchvision_cached(arch)
        hint = "" if cached else "weights not downloaded yet: run once online, or use a checkpoint"
        choices.append(ModelChoice(label, f"torchvision:{arch}", cached is not None, hint))
    return choices


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def load_choice(key: str, mtime: float) -> tuple[CamModel, dict[str, Any]]:
    """Load a model by key (``file:PATH`` or ``torchvision:ARCH``); ``mtime`` invalidates on change."""
    kind, _, value = key.partition(":")
    if kind == "file":
        return load_model(value)
    net = build_torchvision(value, 1000)
    net.load_state_dict(torch.load(_torchvision_cached(value), map_location="cpu", weights_only=True))
    meta = complete_meta({"arch": value, "num_classes": 1000, "class_names": [f"imagenet {i}" for i in range(1000)],
                          "input_size": 448})
    model, meta = derive_coco_head(CamModel(net, value), meta)
    return model.eval(), meta


def model_mtime(key: str) -> float:
    kind, _, value = key.partition(":")
    return Path(value).stat().st_mtime if kind == "file" and Path(value).exists() else 0.0


@st.cache_data(show_spinner="Running the network…", max_entries=64)
def analyze_bytes(image_bytes: bytes, model_key: str, method: str, tta: bool, classes: tuple[int, ...] | None,
                  _localizer: Localizer) -> Analysis:
    """One forward pass for these bytes and model settings; cached on the bytes themselves."""
    st.session_state["forward_passes"] = st.session_state.get("forward_passes", 0) + 1
    return _localizer.analyze([image_bytes], classes)[0]


def localizer_for(model: CamModel, meta: dict[str, Any], method: str, tta: bool) -> Localizer:
    return Localizer(model, meta, method=method, tta=tta, device="cpu")


def pick_model(where=st.sidebar) -> tuple[str, CamModel, dict[str, Any]] | None:
    """The sidebar's model picker; returns ``(key, model, meta)`` or shows why nothing can be loaded."""
    folder = Path(where.text_input("Checkpoint folder", str(checkpoint_folder()),
                                   help="*.pt / *.pth files below this folder are offered (camloc checkpoints or "
                                        "state_dicts with a JSON sidecar)"))
    choices = model_choices(folder)
    usable = [c for c in choices if c.available]
    if not usable:
        st.error("No model is available: the bundled demo checkpoint is missing and no checkpoint was found. "
                 f"Put a checkpoint under {folder} or train one with `python -m train`.")
        return None
    label = where.selectbox("Model", [c.label for c in usable], key="model_label")
    for c in choices:
        if not c.available:
            where.caption(f"{c.label}: {c.hint}")
    choice = next(c for c in usable if c.label == label)
    try:
        model, meta = load_choice(choice.key, model_mtime(choice.key))
    except (ModelError, OSError, RuntimeError) as exc:
        st.error(f"Cannot load {choice.label}: {exc}")
        return None
    return choice.key, model, meta


def read_image_bytes(upload) -> tuple[str, bytes]:
    return upload.name, upload.getvalue()


def choose_images(where=st) -> list[tuple[str, bytes]]:
    """Uploaded images, or the example gallery when nothing is uploaded."""
    uploads = where.file_uploader("Upload images", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"],
                                  accept_multiple_files=True, key="uploads")
    if uploads:
        return [read_image_bytes(u) for u in uploads]
    examples = example_images()
    if not examples:
        return []
    name = where.selectbox("…or pick an example", [p.name for p in examples], key="example")
    return [(name, (EXAMPLES / name).read_bytes())]


def example_annotations(name: str) -> list[dict[str, Any]]:
    """Ground-truth boxes of a bundled example (empty for other images)."""
    ann = EXAMPLES / "annotations.json"
    if not ann.is_file():
        return []
    data = json.loads(ann.read_text())
    ids = {im["id"] for im in data["images"] if im["file_name"] == name}
    return [a for a in data["annotations"] if a["image_id"] in ids]


def decode(name: str, data: bytes):
    """The upright RGB image, or ``None`` after showing a one-line error."""
    try:
        return load_image(data, name)
    except ImageError as exc:
        st.error(str(exc))
        return None
