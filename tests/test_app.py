"""Every page of the Streamlit app, driven by streamlit.testing.v1.AppTest."""

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import threading

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from camloc import pretrained
from camloc.cam import METHODS as MAP_METHODS
from camloc.classes import COCO_NAMES
from camloc.demo import EXAMPLES
from camloc.evaluation import localization_metrics
from camloc.localize import Localizer
from camloc.models import build_torchvision, save_checkpoint
from camloc.recipes import DEFAULT_RECIPE, RECIPES
from camloc.synthetic import generate
from camloc.viz import class_hex
from pages.analysis import METHODS, PLAIN_MAPS
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES
from tests.helpers import gradient_image, image_bytes, random_head_model
from train.cli import main as train_main

TIMEOUT = 180
EXAMPLE_ANNOTATIONS = json.loads((EXAMPLES / "annotations.json").read_text())


def page(name: str, monkeypatch, checkpoints=None, offline: bool = True) -> AppTest:
    """A page (or the whole app for ``app.py``) with fresh caches, so forward passes count from zero."""
    st.cache_data.clear()
    monkeypatch.chdir(ROOT)
    if offline:
        monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    if checkpoints is not None:
        monkeypatch.setenv("CAMLOC_CHECKPOINTS", str(checkpoints))
    if name == "app.py":  # it sets OMP_WAIT_POLICY for its own process: keep that out of the other tests
        monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    path = ROOT / name if name == "app.py" else ROOT / "pages" / name
    return AppTest.from_file(str(path), default_timeout=TIMEOUT)


def boxes_table(at: AppTest):
    return at.dataframe[1].value  # the page's second table (after the top-k table)


def views_computed(*uses: tuple[str, bool, str | None]) -> int:
    """How many views the app computes for one image and class, for these (method, tta, recipe) uses:
    each (method, view) once, whatever page or recipe asks for it again."""
    model, meta = random_head_model("resnet18", 4)
    return len({(method, view) for method, tta, recipe in uses
                for view in Localizer(model, meta, method=method, tta=tta, device="cpu").views(recipe)})


EXPLORE_FIRST = [("cam", False, PLAIN_MAPS), ("cam", False, DEFAULT_RECIPE)]  # ranking + the default recipe's maps
COMPARE_ALL = [("cam", False, PLAIN_MAPS), *((method, tta, recipe) for method, tta in METHODS.values()
                                              for recipe in RECIPES)]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def image_captions(at: AppTest) -> list[str]:
    return [caption for image in at.get("image") for caption in image.captions]


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


@pytest.fixture
def coco_checkpoints(tmp_path):
    """A folder with a (random-head) COCO-80 checkpoint: a model whose classes are COCO's."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    model, meta = random_head_model("resnet18", 80)
    save_checkpoint(model, meta, folder / "coco.pt")
    return folder


# ------------------------------------------------------------------------------------------ Explore

def test_explore_is_live_and_runs_the_network_once(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == views_computed(*EXPLORE_FIRST)
    assert at.sidebar.selectbox(key="model_label").value.startswith("Demo")
    assert at.sidebar.selectbox(key="recipe").options == list(RECIPES)
    assert at.sidebar.selectbox(key="recipe").value == DEFAULT_RECIPE
    at.sidebar.selectbox(key="recipe").set_value("seed").run()  # the course recipe: Otsu / fraction, all / largest
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
    for recipe in RECIPES:
        at.sidebar.selectbox(key="recipe").set_value(recipe).run()
        no_exception(at)
    cam_views = views_computed(*EXPLORE_FIRST, *[("cam", False, recipe) for recipe in RECIPES])
    assert at.session_state["forward_passes"] == cam_views  # sliders and recipes reuse the cached passes
    at.sidebar.selectbox(key="recipe").set_value("seed").run()
    assert at.sidebar.radio(key="box_mode").value == "largest"  # each recipe keeps its own settings
    at.sidebar.radio(key="method").set_value("Grad-CAM++").run()
    no_exception(at)
    assert len(boxes_table(at)) == 1 and at.session_state["forward_passes"] == cam_views + 1
    at.sidebar.selectbox(key="class_name").select_index(0).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == cam_views + 1  # Grad-CAM++ of every class came from that pass


def test_tta_reuses_the_plain_pass_and_caches_its_views(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("seed").run()
    at.sidebar.radio(key="method").set_value("TTA-CAM").run()
    no_exception(at)
    tta = views_computed(*EXPLORE_FIRST, ("cam", True, PLAIN_MAPS))
    assert tta == 6 and at.session_state["forward_passes"] == 6  # the plain pass + the 5 other views, once
    assert "TTA-CAM of" in image_captions(at)[1]
    at.sidebar.selectbox(key="class_name").select_index(2).run()
    at.sidebar.radio(key="threshold_mode").set_value("Fraction of max").run()
    at.sidebar.radio(key="method").set_value("CAM").run()
    at.sidebar.radio(key="method").set_value("TTA-CAM").run()
    no_exception(at)
    assert at.session_state["forward_passes"] == 6


def test_recipe_controls_follow_the_recipe_parameters(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    for name, recipe in RECIPES.items():
        at.sidebar.selectbox(key="recipe").set_value(name).run()
        no_exception(at)
        shown = {w.key for w in at.sidebar.radio}
        assert ("threshold_mode" in shown) == ("threshold" in recipe.parameters())
        assert ("box_mode" in shown) == ("mode" in recipe.parameters())
        assert f"recipe {name}" in image_captions(at)[2]


def test_a_new_image_selects_its_own_top_class(monkeypatch, tmp_path):
    """Bug 1: the class picker kept the previous image's class after a new image."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    classes = at.sidebar.selectbox(key="class_name")
    first_top = classes.value
    picked = classes.options[-1]
    classes.set_value(picked).run()
    at.sidebar.selectbox(key="example").set_value("shapes_000002.jpg").run()
    no_exception(at)
    top = at.dataframe[0].value["class"][0]
    assert at.sidebar.selectbox(key="class_name").value == top != picked
    assert f"of “{top}”" in image_captions(at)[1]
    at.sidebar.selectbox(key="example").set_value("shapes_000001.jpg").run()
    assert at.sidebar.selectbox(key="class_name").value == picked  # picked for this image: stays picked
    upload = (EXAMPLES / "shapes_000005.jpg").read_bytes()
    at.sidebar.file_uploader(key="uploads").set_value(("mine.jpg", upload, "image/jpeg")).run()
    assert at.sidebar.selectbox(key="class_name").value == at.dataframe[0].value["class"][0] != first_top


def test_a_new_model_selects_its_own_top_class(monkeypatch, coco_checkpoints):
    at = page("explore.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="class_name").select_index(3).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    assert at.sidebar.selectbox(key="class_name").value == at.dataframe[0].value["class"][0]


def test_explore_shows_iou_for_annotated_examples(monkeypatch, tmp_path):
    first = EXAMPLE_ANNOTATIONS["annotations"][0]
    name = next(im["file_name"] for im in EXAMPLE_ANNOTATIONS["images"] if im["id"] == first["image_id"])
    category = next(c["name"] for c in EXAMPLE_ANNOTATIONS["categories"] if c["id"] == first["category_id"])
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="example").set_value(name).run()
    at.sidebar.selectbox(key="class_name").set_value(category).run()
    no_exception(at)
    ious = boxes_table(at)["IoU with GT"]
    assert ious.notna().all() and ious.max() > 0
    count = sum(a["image_id"] == first["image_id"] and a["category_id"] == first["category_id"]
                for a in EXAMPLE_ANNOTATIONS["annotations"])
    assert f"Ground truth: {count} “{category}” object(s) in {name} (white boxes)." in texts(at.caption)
    (tmp_path / "bad.json").write_text("{not json")
    at.sidebar.text_input(key="gt_file").set_value(str(tmp_path / "bad.json")).run()
    no_exception(at)
    assert "is not a COCO instances file (JSONDecodeError): no ground truth." in texts(at.sidebar.caption)
    assert "IoU with GT" not in boxes_table(at).columns


def test_ground_truth_only_for_the_models_own_classes(monkeypatch, coco_checkpoints):
    """Bug 2: under a COCO model the shapes' category id 1 was read as COCO's person."""
    at = page("explore.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    for class_name in ("person", "bicycle"):  # COCO ids 1 and 2 = the shapes' red disc and blue square
        at.sidebar.selectbox(key="class_name").set_value(class_name).run()
        no_exception(at)
        assert "Ground truth" not in texts(at.caption)
        assert "IoU with GT" not in boxes_table(at).columns


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
                                                       ("b.png", image_bytes(gradient_image(90, 60)), "image/png"),
                                                       ("a.jpg", jpeg[:-7] + b"\xff\xd9", "image/jpeg")])
    at.run()
    no_exception(at)
    assert not at.error and at.selectbox(key="shown_image").options == ["a.jpg", "b.png", "a (2).jpg"]


def test_the_demo_model_says_it_only_knows_shapes(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    assert not at.info  # a bundled example: the demo model is the right one
    photo = image_bytes(gradient_image(240, 320), "JPEG")
    at.sidebar.file_uploader(key="uploads").set_value(("holiday.jpg", photo, "image/jpeg")).run()
    no_exception(at)
    hint = texts(at.info)
    assert "knows only 6 synthetic shapes" in hint and "**Model**" in hint


@pytest.mark.realdata
def test_a_real_photo_with_its_coco_ground_truth(monkeypatch, tmp_path):
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), tmp_path / COCO80.with_suffix(suffix).name)
    zebra = "000000104455.jpg"
    at = page("app.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="model_label").set_value(COCO80.name).run()
    at.sidebar.text_input(key="gt_file").set_value(str(VAL_ANN)).run()
    at.sidebar.file_uploader(key="uploads").set_value((zebra, (VAL_IMAGES / zebra).read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.sidebar.selectbox(key="class_name").value == "zebra"
    assert "Ground truth: 2 “zebra” object(s) in 000000104455.jpg (white boxes)." in texts(at.caption)
    assert boxes_table(at)["IoU with GT"].max() > 0.3  # a weak model (see ../shared/README.md), but on target
    at.switch_page("pages/compare.py").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert table["IoU of top box"].max() > 0.3 and table["objects found (IoU ≥ 0.5)"].str.endswith("/2").all()


@pytest.mark.realdata
def test_explore_with_a_real_coco_model_and_image(monkeypatch, tmp_path):
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), tmp_path / COCO80.with_suffix(suffix).name)
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="model_label").set_value(COCO80.name).run()
    at.sidebar.file_uploader(key="uploads").set_value(
        ("dog.jpg", (VAL_IMAGES / "000000005001.jpg").read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert not at.info  # a real model on a real photo: no demo hint
    classes = at.sidebar.selectbox(key="class_name").options
    assert len(classes) == 80 and set(classes) >= {"person", "toothbrush"}
    before = boxes_table(at).to_string()
    at.sidebar.selectbox(key="class_name").set_value("toothbrush").run()
    assert boxes_table(at).to_string() != before


# ------------------------------------------------------------------------------------------ shared state

def test_model_folder_uploads_and_class_are_shared_by_all_pages(monkeypatch, coco_checkpoints, tmp_path):
    """Bug 3: going from Explore to All classes reset the folder and the model and dropped the upload."""
    at = page("app.py", monkeypatch).run()
    no_exception(at)
    at.sidebar.text_input(key="checkpoint_folder").set_value(str(coco_checkpoints)).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    photo = image_bytes(gradient_image(120, 160, seed=3), "PNG")
    at.sidebar.file_uploader(key="uploads").set_value(("street.png", photo, "image/png")).run()
    at.sidebar.selectbox(key="class_name").set_value("giraffe").run()
    passes = at.session_state["forward_passes"]
    for target in ("pages/all_classes.py", "pages/pr_curves.py", "pages/compare.py", "pages/explore.py"):
        at.switch_page(target).run()
        no_exception(at)
        if target == "pages/pr_curves.py":
            continue
        assert at.sidebar.text_input(key="checkpoint_folder").value == str(coco_checkpoints)
        assert at.sidebar.selectbox(key="model_label").value == "coco.pt"
        assert "Showing your upload: street.png" in texts(at.sidebar.caption)
        if target != "pages/all_classes.py":
            assert at.sidebar.selectbox(key="class_name").value == "giraffe"
    assert image_captions(at)[0].startswith("street.png")
    # only the views Compare adds (gradient methods, TTA, the recipes' mirror views); none for All classes
    assert at.session_state["forward_passes"] == passes - views_computed(*EXPLORE_FIRST) + views_computed(*COMPARE_ALL)
    at.sidebar.button(key="clear_uploads").click().run()
    assert image_captions(at)[0].startswith("shapes_")


def test_all_classes_page(monkeypatch, tmp_path):
    at = page("all_classes.py", monkeypatch, tmp_path).run()
    no_exception(at)
    legend = at.dataframe[0]
    assert len(legend.value) == 4 and legend.value["colour"].eq("").all()  # a swatch, not a colour code
    names = {c["name"]: c["id"] for c in EXAMPLE_ANNOTATIONS["categories"]}
    swatches = re.findall(r"background-color: (#[0-9a-f]{6})", legend.proto.arrow_data.styler.styles)
    assert swatches == [class_hex(names[n]) for n in legend.value["class"]]
    at.multiselect(key="overlay_classes").set_value(list(legend.value["class"][:2])).run()
    at.sidebar.slider(key="grid_k").set_value(3).run()
    no_exception(at)
    assert len(at.dataframe[0].value) == 2
    assert at.session_state["forward_passes"] == 1


def test_all_classes_overlay_follows_a_model_switch(monkeypatch, coco_checkpoints):
    """Bug 4: after a model switch the overlay's class multiselect came up empty."""
    at = page("all_classes.py", monkeypatch, coco_checkpoints).run()
    at.multiselect(key="overlay_classes").set_value(at.multiselect(key="overlay_classes").value[:1]).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    chosen = at.multiselect(key="overlay_classes").value
    assert len(chosen) == 4 and set(chosen) <= set(COCO_NAMES)
    assert not at.info  # no "pick at least one class"
    at.sidebar.selectbox(key="model_label").set_value(at.sidebar.selectbox(key="model_label").options[0]).run()
    assert len(at.multiselect(key="overlay_classes").value) == 1  # the choice made for the demo model is back


# ------------------------------------------------------------------------------------------ Compare

def test_compare_shows_every_method_and_recipe_with_iou(monkeypatch, tmp_path):
    at = page("compare.py", monkeypatch, tmp_path).run()
    no_exception(at)
    captions = image_captions(at)
    methods = tuple(METHODS)
    assert {"CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "LayerCAM fused", "Score-CAM", "TTA-CAM"} <= set(methods)
    assert [c.split(":")[0] for c in captions] == [*methods, *RECIPES]
    assert all("top box IoU" in c for c in captions)  # the example is annotated and the model knows its classes
    table = at.dataframe[0].value
    assert len(table) == len(methods) * len(RECIPES) and list(table["method"].unique()) == list(methods)
    assert table["IoU of top box"].between(0, 1).all() and table["IoU of top box"].max() > 0.3
    first = views_computed(*COMPARE_ALL)
    assert at.session_state["forward_passes"] == first  # each method's views, once
    at.sidebar.selectbox(key="class_name").select_index(1).run()
    # every method computed every class at once, but a costly one (fused LayerCAM) computes the class shown
    costly = [(method, tta, recipe) for method, tta, recipe in COMPARE_ALL if MAP_METHODS[method].costly
              and MAP_METHODS[method].per_class]
    assert costly and at.session_state["forward_passes"] == first + views_computed(*costly)
    at.radio(key="compare_maps").set_value("TTA-CAM").run()
    at.sidebar.slider(key="alpha").set_value(0.2).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == first + views_computed(*costly)


def test_compare_without_ground_truth(monkeypatch, coco_checkpoints):
    at = page("compare.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    assert "no ground truth for this image and class" in texts(at.caption)
    assert "IoU of top box" not in at.dataframe[0].value.columns


# ------------------------------------------------------------------------------------------ torchvision models

@pytest.fixture
def weights_server(tmp_path):
    """A local file server with a MobileNetV2 ImageNet state_dict named like torchvision's files."""
    folder = tmp_path / "served"
    folder.mkdir()
    torch.manual_seed(0)
    tmp_file = folder / "weights.pth"
    torch.save(build_torchvision("mobilenet_v2", 1000).state_dict(), tmp_file)
    name = f"mobilenet_v2-{hashlib.sha256(tmp_file.read_bytes()).hexdigest()[:8]}.pth"
    tmp_file.rename(folder / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{name}"
    server.shutdown()
    server.server_close()


def test_torchvision_model_offline_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = page("explore.py", monkeypatch, tmp_path).run()
    no_exception(at)
    assert at.sidebar.selectbox(key="model_label").options == ["Demo: synthetic shapes (offline, bundled)"]
    resnet, mobilenet = (pretrained.imagenet_weights(arch) for arch in ("resnet50", "mobilenet_v2"))
    assert (f"Offline: to use torchvision's ResNet-50 and MobileNetV2 (ImageNet → COCO), put "
            f"[{resnet.file_name}]({resnet.url}) and [{mobilenet.file_name}]({mobilenet.url}) "
            f"into `{tmp_path / 'torch' / 'hub' / 'checkpoints'}`.") in texts(at.sidebar.caption)


def test_torchvision_model_downloads_once_then_runs(monkeypatch, tmp_path, weights_server):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
    served = {"mobilenet_v2": weights_server, "resnet50": "http://127.0.0.1:9/resnet50-11ad3fa6.pth"}  # port 9: closed
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch: pretrained.PretrainedWeights(arch, served[arch]))
    calls, reported = [], []
    download = pretrained.download

    def watched(weights, progress):
        calls.append(weights.arch)
        return download(weights, lambda *a: (reported.append(a), progress(*a)))

    monkeypatch.setattr(pretrained, "download", watched)
    st.cache_resource.clear()
    at = page("explore.py", monkeypatch, tmp_path, offline=False).run()
    no_exception(at)
    label = "torchvision MobileNetV2 (ImageNet → COCO)"
    assert label in at.sidebar.selectbox(key="model_label").options
    assert "downloads its weights once when chosen" in texts(at.sidebar.caption)
    assert "Offline: to use torchvision's ResNet-50 (ImageNet → COCO), put [resnet50-11ad3fa6.pth]" in texts(
        at.sidebar.caption)
    at.sidebar.selectbox(key="model_label").set_value(label).run()
    no_exception(at)
    assert not at.error
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights_server.rsplit("/", 1)[1]
    size = cached.stat().st_size
    assert cached.is_file() and len(reported) > 1 and reported[-1] == (size, size)  # the progress bar's feed
    classes = at.sidebar.selectbox(key="class_name").options
    assert len(classes) < 80 and "dog" in classes and "person" not in classes  # no ImageNet counterpart
    at.sidebar.selectbox(key="model_label").set_value(at.sidebar.selectbox(key="model_label").options[0]).run()
    at.sidebar.selectbox(key="model_label").set_value(label).run()
    no_exception(at)
    assert calls == ["mobilenet_v2"]  # downloaded once, then taken from the cache
    assert "MobileNetV2 (ImageNet → COCO): downloads" not in texts(at.sidebar.caption)


# ------------------------------------------------------------------------------------------ Training runs

def write_log(folder, records) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_runs_page_plots_a_log(monkeypatch, tmp_path):
    records = [{"epoch": e, "train_loss": 1.0 / e, "images_per_s": 50.0, "skipped_images": 0, "lr": 1e-3 / e,
                "val_map": m, "val_loc_ap50": 0.1 * m} for e, m in ((1, 0.2), (2, 0.5), (3, 0.4))]
    write_log(tmp_path / "runs" / "r1", records)
    write_log(tmp_path / "runs" / "nested" / "r2", records[:1])
    at = page("training_runs.py", monkeypatch, tmp_path / "runs").run()
    no_exception(at)
    assert at.sidebar.selectbox(key="run").options == ["nested/r2", "r1"]
    at.sidebar.selectbox(key="run").set_value("r1").run()
    no_exception(at)
    assert {m.label: m.value for m in at.metric} == {"epochs": "3", "best epoch": "2", "best validation mAP": "0.500",
                                                      "its localisation AP50": "0.050"}
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {t["name"]: t["y"] for t in spec["data"]}
    assert traces["training loss"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert traces["validation mAP (classification)"] == [0.2, 0.5, 0.4]
    assert traces["learning rate"] == pytest.approx([1e-3, 5e-4, 1e-3 / 3])
    assert len(at.dataframe[0].value) == 3
    assert "settings are unknown" in texts(at.caption)  # a log without checkpoints


def test_training_runs_page_bad_folders_give_one_line(monkeypatch, tmp_path):
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "log.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2, "tra')
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "log.jsonl").write_text("[1, 2]\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text("")
    at = page("training_runs.py", monkeypatch, tmp_path / "nothing").run()
    no_exception(at)
    assert "No training run under" in texts(at.info)
    for folder, message in [("torn", "line 2 is not JSON"), ("list", "line 1 is not an epoch record"),
                            ("empty", "is empty"), ("missing", "is not a folder"), ("", "has no log.jsonl")]:
        at.sidebar.text_input(key="run_path").set_value(str(tmp_path / folder)).run()
        no_exception(at)
        assert len(at.error) == 1 and message in at.error[0].value, (folder, at.error)


@pytest.mark.slow
def test_training_runs_page_on_a_real_tiny_run(monkeypatch, tmp_path):
    data = generate(tmp_path / "data", 24, 8, 3, 64, 0)
    out = tmp_path / "runs" / "tiny"
    assert train_main(["--images", str(data / "train"), "--ann", str(data / "annotations/instances_train.json"),
                       "--val-images", str(data / "val"), "--val-ann", str(data / "annotations/instances_val.json"),
                       "--arch", "mobilenet_v2", "--weights", "none", "--epochs", "2", "--img-size", "64",
                       "--batch-size", "8", "--workers", "0", "--device", "cpu", "--val-limit", "4",
                       "--out", str(out)]) == 0
    at = page("training_runs.py", monkeypatch, tmp_path / "runs").run()
    no_exception(at)
    assert at.sidebar.selectbox(key="run").value == "tiny"
    names = {t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert names == {"training loss", "validation mAP (classification)", "localisation AP50 (CAM boxes)",
                     "learning rate"}
    settings = dict(zip(*at.dataframe[1].value.T.values))
    assert settings["arch"] == "mobilenet_v2" and settings["epochs"] == "2"
    assert at.metric[0].value == "2"


# ------------------------------------------------------------------------------------------ PR curves, dataset

@pytest.fixture
def eval_folder(tmp_path):
    gt = EXAMPLE_ANNOTATIONS
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
    ids = {c["name"]: c["id"] for c in EXAMPLE_ANNOTATIONS["categories"]}
    for trace in spec["data"]:  # colour fixed by class, steps, one hover for all classes
        assert trace["line"]["color"] == class_hex(ids[trace["name"].split(" (AP=")[0]])
        assert trace["line"]["shape"] == "hv"
    assert spec["layout"]["hovermode"] == "x unified"
    widths = [trace["line"]["width"] for trace in spec["data"]]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 2 and len(set(widths)) == len(widths)
    assert len(at.dataframe[0].value) == 12  # the browser test checks that all 12 rows show without a scroll
    assert not at.json  # nothing but the intended elements (no stray "magic" output)
    assert len(at.dataframe) == 2 and "WSOL" not in " ".join(h.value for h in at.subheader)  # no "wsol": no table
    metrics = json.loads((eval_folder / "metrics.json").read_text())
    metrics["wsol"] = {"MaxBoxAccV2": 0.25, "MaxBoxAcc": {"30": 0.5, "50": 0.2, "70": 0.05},
                       "best_threshold": {"30": 0.15, "50": 0.2, "70": 0.31}, "GT-known Loc": 0.2, "Top-1 Loc": 0.1,
                       "num_maps": 40}
    (eval_folder / "metrics.json").write_text(json.dumps(metrics))
    at.run()
    assert [h.value for h in at.subheader][1].startswith("WSOL metrics")
    wsol = at.dataframe[1].value  # after the COCO summary
    assert wsol["value"].tolist() == [0.25, 0.5, 0.2, 0.05, 0.2, 0.1]
    assert wsol["best CAM threshold"].tolist()[1:] == ["0.15", "0.2", "0.31", "0.2", "0.2"]
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
    assert not at.dataframe and "Give a detections file" in texts(at.caption)
    gt = EXAMPLE_ANNOTATIONS
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=0.5)
            for a in gt["annotations"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    at.sidebar.text_input(key="ds_dets").set_value(str(tmp_path / "dets.json")).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) >= 1 and (table["IoU"] == 1.0).all()
    at.sidebar.slider(key="ds_min_score").set_value(0.9).run()
    no_exception(at)
    assert not at.dataframe and "No detection on this image with score ≥ 0.90" in texts(at.info)
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
