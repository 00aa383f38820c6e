"""The image pages' inputs: uploaded or example images (shared by all pages), decoding with one-line
errors, ground truth matched to the model's classes by name, and the demo model's real-photo hint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

from camloc.demo import EXAMPLES, example_images
from camloc.images import ImageError, load_image
from pages.model_picker import DEMO_KEY
from pages.state import carry, clear_uploads, options_filter, remember_uploads, uploads

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"]
EXAMPLE_ANNOTATIONS = EXAMPLES / "annotations.json"


@dataclass(frozen=True)
class InputImage:
    """An image as given: its file name, its raw bytes, and whether it is a bundled example."""

    name: str
    data: bytes
    example: bool

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


def choose_images(where=st.sidebar) -> list[InputImage]:
    """Uploaded images (kept across pages until replaced), or the example picker when there are none."""
    where.file_uploader("Upload images", type=IMAGE_TYPES, accept_multiple_files=True, key="uploads",
                        on_change=remember_uploads, args=("uploads",))
    kept = uploads()
    if kept:
        if not st.session_state.get("uploads"):  # uploaded on another page: the widget there held them
            where.caption(f"Showing your upload{'s' if len(kept) > 1 else ''}: {', '.join(n for n, _ in kept)}")
            where.button("Back to the examples", on_click=clear_uploads, key="clear_uploads")
        return [InputImage(name, data, False) for name, data in kept]
    names = [p.name for p in example_images()]
    if not names:
        return []
    carry("example", names[0], options_filter(names))
    name = where.selectbox("…or pick an example", names, key="example")
    return [InputImage(name, (EXAMPLES / name).read_bytes(), True)]


def pick_image(images: list[InputImage], where=st) -> InputImage:
    """The image shown: the only one, or the one picked among several uploads."""
    if len(images) == 1:
        return images[0]
    names = [im.name for im in images]
    carry("shown_image", names[0], options_filter(names))
    shown = where.selectbox("Image", names, key="shown_image")
    return images[names.index(shown)]


def decode(image: InputImage) -> Image.Image | None:
    """The upright RGB image, or ``None`` after showing a one-line error."""
    try:
        return load_image(image.data, image.name)
    except ImageError as exc:
        st.error(str(exc))
        return None


@st.cache_data(max_entries=8, show_spinner=False)
def _read_annotations(path: str, mtime: float) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def annotations_input(where=st.sidebar) -> dict[str, Any] | None:
    """The ground-truth file images are matched against by file name (default: the bundled examples');
    ``None`` (after a one-line message) when it cannot be used."""
    carry("gt_file", str(EXAMPLE_ANNOTATIONS))
    path = Path(where.text_input("Ground truth (COCO instances JSON)", key="gt_file",
                                 help="IoU with the ground truth is shown for images listed in this file, e.g. "
                                      "COCO's instances_val2017.json for photos from val2017").strip())
    if not path.is_file():
        where.caption(f"{path} does not exist: no ground truth.")
        return None
    try:
        data = _read_annotations(str(path), path.stat().st_mtime)
        if not {"images", "annotations", "categories"} <= set(data):
            raise KeyError("images, annotations, categories")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        where.caption(f"{path} is not a COCO instances file ({exc.__class__.__name__}): no ground truth.")
        return None
    return data


def ground_truth(annotations: dict[str, Any] | None, image_name: str, class_name: str) -> list[list[float]] | None:
    """Ground-truth boxes ``[x, y, w, h]`` of ``class_name`` in the image of that file name, or ``None``
    when there is none to compare with: no annotations, the file does not list the image, or it has no
    category of that name (a model's class is matched to a dataset's category by name, never by id)."""
    if annotations is None:
        return None
    ids = {im.get("id") for im in annotations["images"] if im.get("file_name") == image_name}
    category = [c.get("id") for c in annotations["categories"] if c.get("name") == class_name]
    if not ids or not category:
        return None
    return [a["bbox"] for a in annotations["annotations"]
            if a.get("image_id") in ids and a.get("category_id") == category[0] and not a.get("iscrowd")]


def demo_hint(model_key: str, meta: dict[str, Any], image: InputImage, where=st) -> None:
    """With the demo model, say next to an uploaded photo that the model knows only the synthetic shapes."""
    if model_key == DEMO_KEY and not image.example:
        where.info(f"The bundled demo model knows only {len(meta['class_names'])} synthetic shapes "
                   f"({', '.join(meta['class_names'])}), so its maps of a real photo mean little. "
                   "Pick a COCO model under **Model** in the sidebar: a checkpoint from `python -m train`, or "
                   "torchvision's ResNet-50 / MobileNetV2.")
