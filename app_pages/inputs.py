"""The image pages' inputs: uploaded or example images (shared by all pages), decoding with one-line
errors, ground truth matched to the model's classes by name, and the demo model's real-photo hint."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

from app_pages.model_picker import DEMO_KEY
from app_pages.state import carry, options_filter
from app_pages.uploads import clear_uploads, digest, newest_upload, remember_uploads, remove_upload, uploads
from camloc.demo import EXAMPLES, example_images
from camloc.io.images import FORMATS, ImageError, load_image

#: The file name extensions the uploader takes: those of every format ``load_image`` opens (GIF and
#: WebP included: their first frame), so the browser refuses nothing that camloc can read.
IMAGE_TYPES = sorted(ext.lstrip(".") for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS)
#: The smallest side the app accepts, in pixels: the networks' output stride — a smaller image holds
#: less than one cell of their feature grid, so its class maps mean nothing.
MIN_SIDE = 32
EXAMPLE_ANNOTATIONS = EXAMPLES / "annotations.json"


@dataclass(frozen=True)
class InputImage:
    """An image as given: its file name, its raw bytes, and whether it is a bundled example."""

    name: str
    data: bytes
    example: bool

    @cached_property
    def digest(self) -> str:
        return digest(self.data)


def choose_images(meta: dict[str, Any] | None, where=st.sidebar) -> list[InputImage]:
    """Uploaded images (one set for every page: an upload adds to it), or the example picker when there are
    none — which says, for a model that knows none of the examples' shapes, why no photo is offered."""
    where.file_uploader("Upload images", type=IMAGE_TYPES, accept_multiple_files=True, key="uploads",
                        on_change=remember_uploads, args=("uploads",),
                        help="Each upload adds to your images, on every page; “Remove this image” takes one away")
    kept = uploads()
    if kept:
        where.caption(f"Your upload{'s' if len(kept) > 1 else ''}: {', '.join(n for n, _ in kept)}")
        where.button("Back to the examples", on_click=clear_uploads, key="clear_uploads",
                     help="Forget every uploaded image")
        return [InputImage(name, data, False) for name, data in kept]
    names = [p.name for p in example_images()]
    if not names:
        return []
    carry("example", names[0], options_filter(names))
    name = where.selectbox("…or pick an example", names, key="example")
    shapes = example_classes()
    if meta is not None and not shapes & set(meta["class_names"]):
        where.caption(f"The examples are the demo model's synthetic shapes ({', '.join(sorted(shapes))}), which this "
                      "model does not know; no photo is bundled (each COCO photo has its own licence). Upload a photo "
                      "to see this model at work.")
    return [InputImage(name, (EXAMPLES / name).read_bytes(), True)]


@st.cache_data(show_spinner=False)
def example_classes() -> set[str]:
    """The class names of the bundled examples' ground truth."""
    return {c["name"] for c in json.loads(EXAMPLE_ANNOTATIONS.read_text(encoding="utf-8"))["categories"]}


def pick_image(images: list[InputImage], where=st, remove_where=None) -> InputImage:
    """The image shown: the only one, or the one picked among several uploads (the one just added after an
    upload), with a button (in ``remove_where``, default beside the picker) that removes it from the uploads."""
    newest = newest_upload()
    if len(images) == 1:
        return images[0]
    names = [im.name for im in images]
    carry("shown_image", names[-1], options_filter(names))
    if newest in names:
        st.session_state["shown_image"] = newest
    shown = images[names.index(where.selectbox("Image", names, key="shown_image"))]
    (remove_where or where).button("Remove this image", on_click=remove_upload, args=(shown.name,),
                                   key="remove_upload", icon=":material/close:",
                                   help=f"Take {shown.name} out of your uploads")
    return shown


@dataclass(frozen=True)
class Decoded:
    """An input image decoded: the upright RGB picture, and how many frames the file holds (GIF, WebP)."""

    image: Image.Image
    frames: int = 1


@st.cache_data(max_entries=16, show_spinner=False)
def _decode(digest: str, name: str, _data: bytes) -> Decoded | str:
    """The decoded image, or the one-line reason it cannot be used (cached per image bytes)."""
    try:
        image = load_image(_data, name)
    except ImageError as exc:
        return str(exc)
    if min(image.size) < MIN_SIDE:
        return (f"{name}: the image is {image.width}×{image.height} pixels, below the {MIN_SIDE}×{MIN_SIDE} "
                "the app needs (one cell of the network's feature grid); upload a larger image")
    try:
        with Image.open(io.BytesIO(_data)) as opened:
            frames = int(getattr(opened, "n_frames", 1))
    except Exception:  # a damaged later frame: the first one decoded, and the count is only shown
        frames = 1
    return Decoded(image, frames)


def decode(image: InputImage) -> Decoded | None:
    """The decoded image, or ``None`` after showing in one line why it cannot be used."""
    decoded = _decode(image.digest, image.name, image.data)
    if isinstance(decoded, str):
        st.error(decoded)
        return None
    return decoded


def describe(image: InputImage, decoded: Decoded) -> str:
    """``name (W×H)``, and for an animated file which frame is shown."""
    frames = f", the first of its {decoded.frames} frames" if decoded.frames > 1 else ""
    return f"{image.name} ({decoded.image.width}×{decoded.image.height}{frames})"


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
    if model_key.startswith(f"{DEMO_KEY}@") and not image.example:
        where.info(f"The bundled demo model knows only {len(meta['class_names'])} synthetic shapes "
                   f"({', '.join(meta['class_names'])}), so its maps of a real photo mean little. "
                   "Pick a COCO model under **Model** in the sidebar: a checkpoint from `python -m train`, or "
                   "torchvision's ResNet-50 / MobileNetV2.")
