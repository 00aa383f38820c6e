"""Detector checkpoints in the app (``python -m train --detector``): the model picker lists and loads them
(:func:`camloc.detector.load_any`), and Explore and Compare show their boxes of the chosen class with the ground
truth. A detector has no class map: the heatmap tile says so. The network runs once per (image, model): its
detections are cached like the maps."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from torch import nn

from app_pages.geometry import best_iou
from app_pages.inputs import InputImage, decode, describe, ground_truth, pick_image
from app_pages.pickers import pick_class
from app_pages.pictures import encoded, pick_box_display, tagged_boxes
from app_pages.tables import boxes_table, show_table
from camloc.detector import Detector
from camloc.viz import draw_labelled, format_score

NO_MAP = ("A detector has no class map: it finds boxes directly (trained by `python -m train --detector`). "
          "Pick a classifier checkpoint to see maps.")


@st.cache_resource(max_entries=8, show_spinner=False)
def _detector(model_id: int, _model: nn.Module, _meta: dict[str, Any]) -> Detector:
    return Detector(_model, _meta, device="cpu")


@st.cache_data(max_entries=256, show_spinner="Running the detector…")
def _detections(digest: str, model_key: str, _data: bytes, _detector: Detector) -> list[dict[str, Any]]:
    """Every detection of the image (all classes), best first."""
    return sorted(_detector.predict(_data), key=lambda d: -d["score"])


def show(page: str, model_key: str, model: nn.Module, meta: dict[str, Any], images: list[InputImage],
         gt_data: dict[str, Any] | None) -> None:
    """Explore's or Compare's view of a detector: the image, the (absent) map, the class's boxes and their
    table — with IoU against the ground truth when the image is annotated."""
    item = pick_image(images)
    decoded = decode(item)
    if decoded is None:
        return
    try:
        found = _detections(item.digest, model_key, item.data, _detector(id(model), model, meta))
    except (ValueError, RuntimeError) as exc:
        st.error(f"Could not run the detector on {item.name}: {exc}")
        return
    ids = meta["category_ids"]
    best = {}
    for d in found:
        best.setdefault(d["category_id"], d["score"])
    ranked = sorted(range(len(ids)), key=lambda k: -best.get(ids[k], -1.0))
    k = pick_class(ranked, meta, (model_key, item.digest))
    class_name = meta["class_names"][k]
    boxes = [d for d in found if d["category_id"] == ids[k]]
    display = pick_box_display()
    truth = ground_truth(gt_data, item.name, class_name)
    drawn = tuple((*d["bbox"], d["score"]) for d in boxes[:display.drawn(boxes)])
    picture = draw_labelled(decoded.image, tagged_boxes(drawn, truth or ()))
    caption = f"{display.caption(boxes)} of “{class_name}”, detector {meta['arch']}"
    if page == "compare":
        st.caption(f"“{class_name}” in {item.name}: a detector's boxes (no maps, so no methods or recipes to "
                   "compare).")
        cols = st.columns(2)
        cols[0].image(encoded(picture), caption=caption, output_format="JPEG")
        cols[1].info(NO_MAP)
        row: dict[str, Any] = {"model": meta["arch"], "boxes": len(boxes),
                               "top score": boxes[0]["score"] if boxes else None}
        if truth:
            row["IoU of top box"] = best_iou(boxes[0]["bbox"], truth) if boxes else 0.0
            found_gt = sum(best_iou(g, [d["bbox"] for d in boxes]) >= 0.5 for g in truth)
            row["objects found (IoU ≥ 0.5)"] = f"{found_gt}/{len(truth)}"
        show_table(pd.DataFrame([row]), key="detector_compare_table")
        return
    cols = st.columns(3)
    cols[0].image(decoded.image, caption=describe(item, decoded))
    cols[1].info(NO_MAP)
    top = f" (top score {format_score(boxes[0]['score'])})" if boxes else ""
    cols[2].image(encoded(picture), caption=caption + top, output_format="JPEG")
    if boxes:
        show_table(boxes_table(boxes, truth), key="boxes_table")
    else:
        st.caption(f"No box for “{class_name}” from this detector.")

