"""What Explore and Compare start from: the model, the images and their ground truth in the sidebar, and the
image shown (picked above the pictures, beside the class picker's place) — or the page stops, saying why."""

from __future__ import annotations

from typing import Any, NamedTuple

import streamlit as st

from app_pages import detector_view
from app_pages.inputs import Decoded, InputImage, annotations_input, choose_images, decode, pick_image
from app_pages.model_picker import pick_model
from camloc.detector import is_detector_meta
from camloc.models import CamModel

NO_IMAGE = "Upload an image (or restore the bundled examples) to start."


class Subject(NamedTuple):
    """A map page's model, ground truth and image; ``class_slot`` is where its class picker goes."""

    model_key: str
    model: CamModel
    meta: dict[str, Any]
    gt_data: dict[str, Any] | None
    item: InputImage
    decoded: Decoded
    class_slot: Any


def pick_subject(page: str) -> Subject:
    """The sidebar's model, images and ground truth, then the image shown; ``st.stop()`` when there is no model or
    image, or the image cannot be decoded (each said in one line). A detector has no maps: ``page`` then shows
    its boxes (:func:`detector_view.show`) and stops."""
    picked = pick_model()
    images = choose_images(None if picked is None else picked[2])
    gt_data = annotations_input(st.sidebar.expander("Ground truth"))
    if picked is None or not images:
        if picked is not None:
            st.info(NO_IMAGE)
        st.stop()
    model_key, model, meta = picked
    if is_detector_meta(meta):  # a detector's boxes, no maps
        detector_view.show(page, model_key, model, meta, images, gt_data)
        st.stop()
    class_slot, image_slot, remove_slot = st.columns([3, 3, 2], vertical_alignment="bottom")  # above the pictures
    item = pick_image(images, image_slot, remove_slot)
    decoded = decode(item)
    if decoded is None:
        st.stop()
    return Subject(model_key, model, meta, gt_data, item, decoded, class_slot)
