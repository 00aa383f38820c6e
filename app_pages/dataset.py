"""Dataset browser: a COCO images folder + annotations (+ optional detections), box by box."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.pictures import encoded, pick_box_display
from app_pages.state import carry, options_filter
from app_pages.tables import NO_TRUTH, boxes_table, show_table
from app_pages.words import plural
from camloc.demo import DEMO_EVAL, EXAMPLES
from camloc.io.images import ImageError, load_image
from camloc.viz import color_hex, distinct_colors, draw_boxes


@st.cache_data(max_entries=8)
def read_json(path: str, mtime: float):
    return json.loads(Path(path).read_text())


def load(path: Path, what: str):
    if not path.is_file():
        st.error(f"{what} {path} does not exist.")
        return None
    try:
        return read_json(str(path), path.stat().st_mtime)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        st.error(f"{what} {path} is not valid JSON ({exc}).")
        return None


st.title("Dataset browser")
side = st.sidebar
carry("ds_images", str(EXAMPLES))
folder = Path(side.text_input("Images folder", key="ds_images"))
carry("ds_ann", str(EXAMPLES / "annotations.json"))
ann_path = Path(side.text_input("Annotations (COCO instances JSON)", key="ds_ann"))
carry("ds_dets", str(DEMO_EVAL / "detections.json"))
det_text = side.text_input("Detections (COCO results JSON, optional)", key="ds_dets")
if not folder.is_dir():
    st.error(f"{folder} is not a folder.")
    st.stop()
gt = load(ann_path, "Annotation file")
if gt is None:
    st.stop()
if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= gt.keys():
    st.error(f"{ann_path} is not a COCO instances file (images, annotations, categories).")
    st.stop()
detections = []
if det_text.strip():
    loaded = load(Path(det_text.strip()), "Detections file")
    if loaded is None or not isinstance(loaded, list):
        if loaded is not None:
            st.error("The detections file must be a list of COCO results.")
        st.stop()
    detections = loaded
    if Path(det_text.strip()) == DEMO_EVAL / "detections.json":
        st.info("Detections of the **demo** model: the bundled demo model's on its example scenes (`python -m eval`). "
                "Give your own detections file in the sidebar.")

names = {c["id"]: c["name"] for c in gt["categories"]}
carry("ds_classes", [], options_filter(names.values()), context=str(ann_path))
wanted = side.multiselect("Classes", sorted(names.values()), key="ds_classes",
                          help="Only images with these classes, and only their boxes (empty: all)")
wanted_ids = {cid for cid, n in names.items() if n in wanted} or set(names)
carry("ds_min_score", 0.1)
min_score = side.slider("Minimum detection score", 0.0, 1.0, step=0.01, key="ds_min_score",
                        help="Detections below it are left out of the picture and the table")
display = pick_box_display()
by_image: dict[int, list] = {}
for ann in gt["annotations"]:
    by_image.setdefault(ann["image_id"], []).append(ann)
images = [im for im in sorted(gt["images"], key=lambda im: im["id"])
          if not wanted or any(a["category_id"] in wanted_ids for a in by_image.get(im["id"], []))]
if not images:
    st.warning("No image matches the filter." if wanted else f"{ann_path} lists no images.")
    st.stop()
carry("ds_index", 1, lambda value: 1 <= value <= len(images), context=(str(ann_path), tuple(wanted)))
index = st.number_input(f"Image (1–{len(images)})", 1, len(images), key="ds_index") - 1
info = images[index]
try:
    image = load_image(folder / info["file_name"])
except ImageError as exc:
    st.error(str(exc))
    st.stop()

truth = [a for a in by_image.get(info["id"], []) if a["category_id"] in wanted_ids]
preds = sorted((d for d in detections if d.get("image_id") == info["id"] and d.get("category_id") in wanted_ids
                and d.get("score", 0) >= min_score), key=lambda d: -d["score"])
drawn = preds[:display.drawn(preds)]
shown = list(dict.fromkeys(a["category_id"] for a in [*truth, *preds]))  # this image's classes, truth first
colours = dict(zip(shown, distinct_colors(len(shown))))
cols = st.columns(2)
cols[0].image(encoded(draw_boxes(image, truth, names, colors=colours)), output_format="JPEG", width="stretch",
              caption=f"{info['file_name']}: {plural(len(truth), 'ground-truth box')}"
                      + (f" (GT1–GT{len(truth)})" if len(truth) > 1 else " (GT1)" if truth else ""))
cols[1].image(encoded(draw_boxes(image, drawn, names, colors=colours)), output_format="JPEG", width="stretch",
              caption=f"{display.caption(preds)} of score ≥ {min_score:.2f}, numbered best first")
if not det_text.strip():
    st.caption("Give a detections file (e.g. the detections.json of `python -m eval`) to see predictions here.")
elif not preds:
    st.info(f"No detection on this image with score ≥ {min_score:.2f}"
            + (" among the chosen classes." if wanted else "."))
else:
    table = boxes_table(preds, [a["bbox"] for a in truth], [a["category_id"] for a in truth], names)
    unmatched = " “—”: the ground truth has no box of its class." if (table.get("best GT") == NO_TRUTH).any() else ""
    st.caption("Every detection of score ≥ "
               f"{min_score:.2f}, best first, numbered as on the picture; IoU with the ground-truth box of its class "
               f"it overlaps most.{unmatched}")
    show_table(table, key="ds_table", colours=[color_hex(colours[d["category_id"]]) for d in preds])
if truth:
    st.caption("Ground truth")
    show_table(pd.DataFrame([{"#": f"GT{i}", "class": names.get(a["category_id"], a["category_id"]),
                              **dict(zip("xywh", (round(float(v)) for v in a["bbox"]))),
                              "crowd": bool(a.get("iscrowd"))} for i, a in enumerate(truth, 1)]),
               key="ds_truth", colours=[color_hex(colours[a["category_id"]]) for a in truth])
