"""Every page of the Streamlit app, driven by streamlit.testing.v1.AppTest."""

import json
import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from camloc.demo import EXAMPLES
from camloc.evaluation import localization_metrics
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES
from tests.helpers import gradient_image, image_bytes

TIMEOUT = 180


def page(name: str, monkeypatch, checkpoints=None) -> AppTest:
    """A page with fresh caches (so forward passes are counted from zero)."""
    st.cache_data.clear()
    monkeypatch.chdir(ROOT)
    if checkpoints is not None:
        monkeypatch.setenv("CAMLOC_CHECKPOINTS", str(checkpoints))
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=TIMEOUT)


def boxes_table(at: AppTest):
    return at.dataframe[1].value  # the page's second table (after the top-k table)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_explore_is_live_and_runs_the_network_once(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == 1
    assert at.sidebar.selectbox(key="model_label").value.startswith("Demo")
    first = boxes_table(at).to_string()
    top = at.dataframe[0].value
    assert len(top) == 5 and top["probability"].is_monotonic_decreasing
    at.sidebar.selectbox(key="class_name").select_index(1).run()
    after_class = boxes_table(at).to_string()
    at.sidebar.radio(key="threshold_mode").set_value("Fraction of max").run()
    at.sidebar.slider(key="fraction").set_value(0.8).run()
    after_threshold = boxes_table(at).to_string()
    at.sidebar.slider(key="alpha").set_value(0.9).run()
    at.sidebar.selectbox(key="colormap").set_value("viridis").run()
    at.sidebar.radio(key="box_mode").set_value("largest").run()
    no_exception(at)
    assert first != after_class and after_class != after_threshold
    assert len(boxes_table(at)) == 1
    assert at.session_state["forward_passes"] == 1  # sliders reuse the cached forward pass
    at.sidebar.radio(key="method").set_value("Grad-CAM++").run()
    no_exception(at)
    assert len(boxes_table(at)) == 1 and at.session_state["forward_passes"] == 2


def test_explore_shows_iou_for_annotated_examples(monkeypatch, tmp_path):
    annotations = json.loads((EXAMPLES / "annotations.json").read_text())
    first = annotations["annotations"][0]
    name = next(im["file_name"] for im in annotations["images"] if im["id"] == first["image_id"])
    category = next(c["name"] for c in annotations["categories"] if c["id"] == first["category_id"])
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="example").set_value(name).run()
    at.sidebar.selectbox(key="class_name").set_value(category).run()
    no_exception(at)
    ious = boxes_table(at)["IoU with GT"]
    assert ious.notna().all() and ious.max() > 0


def test_uploads_good_and_bad(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.file_uploader(key="uploads").set_value(("notes.png", b"this is not an image", "image/png")).run()
    no_exception(at)
    assert any("not an image file" in e.value for e in at.error)
    jpeg = image_bytes(gradient_image(200, 300), "JPEG")
    at.sidebar.file_uploader(key="uploads").set_value(("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")).run()
    no_exception(at)
    assert any("truncated" in e.value for e in at.error)
    at.sidebar.file_uploader(key="uploads").set_value([("a.jpg", jpeg, "image/jpeg"),
                                                       ("b.png", image_bytes(gradient_image(90, 60)), "image/png")])
    at.run()
    no_exception(at)
    assert not at.error and at.selectbox(key="shown_image").options == ["a.jpg", "b.png"]


@pytest.mark.realdata
def test_explore_with_a_real_coco_model_and_image(monkeypatch, tmp_path):
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), tmp_path / COCO80.with_suffix(suffix).name)
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="model_label").set_value(COCO80.name).run()
    at.sidebar.file_uploader(key="uploads").set_value(
        ("dog.jpg", (VAL_IMAGES / "000000005001.jpg").read_bytes(), "image/jpeg")).run()
    no_exception(at)
    classes = at.sidebar.selectbox(key="class_name").options
    assert len(classes) == 80 and set(classes) >= {"person", "toothbrush"}
    before = boxes_table(at).to_string()
    at.sidebar.selectbox(key="class_name").set_value("toothbrush").run()
    assert boxes_table(at).to_string() != before


def test_all_classes_page(monkeypatch, tmp_path):
    at = page("all_classes.py", monkeypatch, tmp_path).run()
    no_exception(at)
    legend = at.dataframe[0].value
    assert len(legend) == 4 and legend["colour"].str.match(r"^#[0-9a-f]{6}$").all()
    at.multiselect(key="overlay_classes").set_value(list(legend["class"][:2])).run()
    at.sidebar.slider(key="grid_k").set_value(3).run()
    no_exception(at)
    assert len(at.dataframe[0].value) == 2
    assert at.session_state["forward_passes"] == 1


@pytest.fixture
def eval_folder(tmp_path):
    gt = json.loads((EXAMPLES / "annotations.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9 - 0.01 * i,
             "bbox": [a["bbox"][0] + 3, a["bbox"][1] - 2, a["bbox"][2], a["bbox"][3] + 4]}
            for i, a in enumerate(gt["annotations"])]
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(localization_metrics(gt, dets)))
    return folder


def test_pr_curves_page(monkeypatch, eval_folder, tmp_path):
    at = page("pr_curves.py", monkeypatch).run()
    no_exception(at)
    at.text_input(key="eval_folder").set_value(str(eval_folder)).run()
    no_exception(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [trace["name"] for trace in spec["data"]]
    assert names and all("(AP=" in n for n in names)
    assert len(at.dataframe[0].value) == 12
    assert not at.json  # nothing but the intended elements (no stray "magic" output)
    at.radio(key="iou").set_value("0.75").run()
    spec_75 = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec_75["data"] != spec["data"] or spec_75["layout"] != spec["layout"]
    at.multiselect(key="pr_classes").set_value(at.multiselect(key="pr_classes").value[:1]).run()
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    for folder, message in [(tmp_path / "missing", "is not a folder"), (tmp_path / "bad", "not an eval metrics file"),
                            (tmp_path, "has no metrics.json")]:
        at.text_input(key="eval_folder").set_value(str(folder)).run()
        no_exception(at)
        assert any(message in e.value for e in at.error)


def test_dataset_browser(monkeypatch, tmp_path):
    at = page("dataset.py", monkeypatch).run()
    no_exception(at)
    gt = json.loads((EXAMPLES / "annotations.json").read_text())
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=0.5)
            for a in gt["annotations"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    at.sidebar.text_input(key="ds_dets").set_value(str(tmp_path / "dets.json")).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) >= 1 and (table["IoU"] == 1.0).all()
    at.number_input(key="ds_index").set_value(2).run()
    at.sidebar.multiselect(key="ds_classes").set_value([gt["categories"][0]["name"]]).run()
    no_exception(at)
    at.sidebar.text_input(key="ds_ann").set_value(str(tmp_path / "nope.json")).run()
    no_exception(at)
    assert any("does not exist" in e.value for e in at.error)
    at.sidebar.text_input(key="ds_images").set_value(str(tmp_path / "empty")).run()
    assert any("is not a folder" in e.value for e in at.error)


@pytest.mark.realdata
def test_dataset_browser_on_coco_mini(monkeypatch):
    at = page("dataset.py", monkeypatch).run()
    at.sidebar.text_input(key="ds_images").set_value(str(VAL_IMAGES)).run()
    at.sidebar.text_input(key="ds_ann").set_value(str(VAL_ANN)).run()
    at.sidebar.multiselect(key="ds_classes").set_value(["dog"]).run()
    no_exception(at)
    assert "(1–" in at.number_input(key="ds_index").label


def test_a_broken_checkpoint_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"definitely not a checkpoint")
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="model_label").set_value("broken.pt").run()
    no_exception(at)
    assert any("Cannot load broken.pt" in e.value and "refused, not a tensors-only checkpoint" in e.value
               for e in at.error)
    at.sidebar.selectbox(key="model_label").set_value(at.sidebar.selectbox(key="model_label").options[0]).run()
    no_exception(at)
    assert not at.error  # the app keeps working
