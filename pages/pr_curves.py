"""PR curves: per-class precision-recall from a `python -m eval` output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from camloc.viz import color_hex, distinct_colors, format_score
from pages.state import carry, options_filter
from pages.tables import show_table

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
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
folder = Path(st.text_input("Evaluation folder (the --out of python -m eval)", key="eval_folder"))
if not str(folder) or str(folder) == ".":
    st.info("Enter the output folder of `python -m eval` to plot its curves.")
    st.stop()
metrics = read_metrics(folder)
if metrics is None:
    st.stop()

curves = metrics["pr_curves"]
carry("iou", next(iter(IOU_CHOICES)), options_filter(IOU_CHOICES))
iou_label = st.radio("IoU", list(IOU_CHOICES), horizontal=True, key="iou")
key = IOU_CHOICES[iou_label]
rows = [r for r in metrics["per_class"] if r.get("AP") is not None and str(r["category_id"]) in curves["classes"]]
rows.sort(key=lambda r: -(r.get(AP_KEY[key]) or 0))
names = [r["name"] for r in rows]
carry("pr_classes", names[:5], options_filter(names), context=str(folder.resolve()))
chosen = st.multiselect("Classes", names, key="pr_classes")

figure = go.Figure()
shown = [row for row in rows if row["name"] in chosen]
colours = distinct_colors(len(shown))
for i, row in enumerate(shown):  # the first curves drawn widest, so curves lying on each other all stay visible
    precision = curves["classes"][str(row["category_id"])][key]
    width = 2 + 4 * (len(shown) - 1 - i) / max(len(shown) - 1, 1)
    figure.add_trace(go.Scatter(x=curves["recall"], y=precision, mode="lines", line_shape="hv",
                                line={"color": color_hex(colours[i]), "width": width},
                                name=f"{row['name']} (AP={format_score(row[AP_KEY[key]])})", hovertemplate="%{y:.3~g}"))
figure.update_layout(xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1], yaxis_range=[0, 1.02],
                     legend_title_text=f"IoU {iou_label}", height=480, hovermode="x unified")
st.plotly_chart(figure, key="pr_chart")
st.caption("Steps: COCO's interpolated precision at 101 recall points. Hover a recall to read every class's "
           "precision there; curves on top of each other show as nested lines. The colours are chosen for the "
           "classes shown, as far apart as possible.")

st.subheader("COCO summary")
coco = metrics["coco"]
show_table(pd.DataFrame({"metric": list(STAT_NAMES), "value": [float(coco[n]) for n in STAT_NAMES]}),
           key="coco_stats", height="content")
if metrics.get("voc_map50") is not None:
    st.caption(f"VOC mAP@0.5 (all-point): {format_score(metrics['voc_map50'])}")
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
per_class = pd.DataFrame([{k: r.get(k) for k in ("name", "num_gt", "AP", "AP50", "AP75", "voc_AP50")} for r in rows])
scores = ["AP", "AP50", "AP75", "voc_AP50"]
per_class[scores] = per_class[scores].astype(float)
show_table(per_class, key="per_class_table")
