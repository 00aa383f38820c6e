"""PR curves: per-class precision-recall from a `python -m eval` output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.pr_chart import Curve, class_colours, coinciding, coinciding_note, pr_figure
from app_pages.state import carry, options_filter
from app_pages.tables import show_table
from app_pages.words import plural
from camloc.demo import DEMO_EVAL
from camloc.viz import format_score

#: COCO's 12 stats in pycocotools' order, with what each one averages.
STATS = {"AP": "AP at IoU 0.50:0.95", "AP50": "AP at IoU 0.50", "AP75": "AP at IoU 0.75",
         "APs": "AP, small objects (< 32² px)", "APm": "AP, medium objects (32²–96² px)",
         "APl": "AP, large objects (> 96² px)", "AR1": "AR, 1 detection per image",
         "AR10": "AR, 10 detections per image", "AR100": "AR, 100 detections per image",
         "ARs": "AR, small objects", "ARm": "AR, medium objects", "ARl": "AR, large objects"}
#: The per-class table's columns: the metrics file's keys and their titles.
PER_CLASS = {"name": "class", "num_gt": "objects", "AP": "AP", "AP50": "AP50", "AP75": "AP75",
             "voc_AP50": "VOC AP50"}
IOU_CHOICES = {"0.50": "iou50", "0.75": "iou75", "0.50:0.95": "iou50_95"}
AP_KEY = {"iou50": "AP50", "iou75": "AP75", "iou50_95": "AP"}


def read_metrics(folder: Path) -> dict | None:
    """``metrics.json`` of an eval folder, or ``None`` after a one-line error."""
    path = folder / "metrics.json"
    if not folder.is_dir():
        st.error(f"{folder} is not a folder; give the --out folder of `python -m eval`.")
        return None
    if not path.is_file():
        st.error(f"{folder} has no metrics.json; run `python -m eval ... --out {folder}` first.")
        return None
    try:
        metrics = json.loads(path.read_text())
        curves = metrics["pr_curves"]
        if not isinstance(curves["recall"], list) or not isinstance(curves["classes"], dict):
            raise TypeError("pr_curves")
        missing = [key for key in ("coco", "per_class") if key not in metrics]
        if missing:
            raise KeyError(", ".join(missing))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        st.error(f"{path} is not an eval metrics file ({exc.__class__.__name__}: {exc}); re-run `python -m eval`.")
        return None
    return metrics


st.title("Precision-recall curves")
carry("eval_folder", "")
typed = st.text_input("Evaluation folder (the --out of python -m eval)", key="eval_folder",
                      help="Empty: the bundled demo model's evaluation on its example scenes")
folder = Path(typed.strip()) if typed.strip() else DEMO_EVAL
if folder == DEMO_EVAL:
    st.info("Showing the **demo**: the bundled demo model evaluated on its 6 example scenes (by `python -m eval`). "
            "Enter the output folder of your own `python -m eval` run above.")
metrics = read_metrics(folder)
if metrics is None:
    st.stop()

curves = metrics["pr_curves"]
carry("iou", next(iter(IOU_CHOICES)), options_filter(IOU_CHOICES))
iou_label = st.radio("IoU", list(IOU_CHOICES), horizontal=True, key="iou")
key = IOU_CHOICES[iou_label]
rows = [r for r in metrics["per_class"] if r.get("AP") is not None and str(r["category_id"]) in curves["classes"]]
left_out = [r["name"] for r in metrics["per_class"] if r not in rows]
rows.sort(key=lambda r: -(r.get(AP_KEY[key]) or 0))
names = [r["name"] for r in rows]
carry("pr_classes", names[:5], options_filter(names), context=str(folder.resolve()))
chosen = st.multiselect("Classes", names, key="pr_classes")

shown = [Curve(row["name"], tuple(curves["classes"][str(row["category_id"])][key]), float(row[AP_KEY[key]]))
         for row in rows if row["name"] in chosen]
st.plotly_chart(pr_figure(curves["recall"], shown, class_colours(chosen), iou_label), key="pr_chart")
st.caption(" ".join(filter(None, (
    "Steps: COCO's interpolated precision at 101 recall points. Hover a recall to read every class's precision "
    "there. Each class keeps its colour (chosen in the order the classes were picked, as far apart as possible).",
    coinciding_note(coinciding(shown))))))

st.subheader("COCO summary")
coco = metrics["coco"]
show_table(pd.DataFrame({"metric": list(STATS), "what": list(STATS.values()),
                         "value": [float(coco[n]) for n in STATS]}), key="coco_stats", height="content")
if metrics.get("voc_map50") is not None:
    st.caption(f"VOC mAP at IoU 0.5 (all-point interpolation): {format_score(metrics['voc_map50'])}")
wsol = metrics.get("wsol")
if isinstance(wsol, dict) and isinstance(wsol.get("MaxBoxAcc"), dict) and wsol.get("MaxBoxAccV2") is not None:
    st.subheader("WSOL metrics of the maps (wsolevaluation)")
    best = wsol.get("best_threshold") or {}
    wsol_rows = [{"metric": "MaxBoxAccV2 (mean over δ 30/50/70)", "value": float(wsol["MaxBoxAccV2"]),
                  "best CAM threshold": ""}]
    wsol_rows += [{"metric": f"MaxBoxAcc, IoU ≥ {int(delta) / 100:.2f}", "value": float(value),
                   "best CAM threshold": str(best.get(delta, ""))} for delta, value in wsol["MaxBoxAcc"].items()]
    wsol_rows += [{"metric": name, "value": float(wsol[name]), "best CAM threshold": str(best.get("50", ""))}
                  for name in ("GT-known Loc", "Top-1 Loc") if wsol.get(name) is not None]
    show_table(pd.DataFrame(wsol_rows), key="wsol_stats", height="content")
    st.caption(f"Over {wsol.get('num_maps', '?')} maps, one per image and class present; each is right at a "
               "threshold when one of its boxes (all contours, at 224×224) matches a ground-truth box of its "
               "class. Top-1 Loc also needs the class among the image's n most probable (n classes present).")
st.subheader("Per-class AP")
per_class = pd.DataFrame([{title: r.get(field) for field, title in PER_CLASS.items()} for r in rows])
scores = [title for field, title in PER_CLASS.items() if field not in ("name", "num_gt")]
per_class[scores] = per_class[scores].astype(float)
show_table(per_class, key="per_class_table")
if left_out:
    st.caption(f"Not listed: {plural(len(left_out), 'class', 'classes')} of the model with no ground-truth object in "
               f"this evaluation ({', '.join(left_out)}): no AP to compute.")
