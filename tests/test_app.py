"""Every page of the Streamlit app, driven by streamlit.testing.v1.AppTest."""

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import threading

import numpy as np
import pyarrow as pa
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app_pages.analysis import PLAIN_MAPS, views_label
from app_pages.methods import METHODS, offered
from app_pages.pickers import BOX_SCALES
from camloc import viz
from camloc.boxes import DEFAULT_RECIPE, RECIPES
from camloc.cam import METHODS as MAP_METHODS
from camloc.demo import DEMO_CHECKPOINT, EXAMPLES
from camloc.detector import Detector, build_detector, detector_payload
from camloc.evaluation import localization_metrics
from camloc.localize import Localizer
from camloc.models import atomic_torch_save, build_torchvision, load_model, pretrained, save_checkpoint
from camloc.models.classes import COCO_NAMES
from camloc.synthetic import generate
from camloc.viz import GROUND_TRUTH_COLOR, color_hex, distinct_colors, format_score
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES
from tests.helpers import count_tags, gradient_image, image_bytes, random_head_model
from train.cli import main as train_main

TIMEOUT = 180
EXAMPLE_ANNOTATIONS = json.loads((EXAMPLES / "annotations.json").read_text())


def page(name: str, monkeypatch, checkpoints=None, offline: bool = True) -> AppTest:
    """A page (or the whole app for ``app.py``) with fresh caches, so forward passes count from zero."""
    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.chdir(ROOT)
    if offline:
        monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    if checkpoints is not None:
        monkeypatch.setenv("CAMLOC_CHECKPOINTS", str(checkpoints))
    if name == "app.py":  # it sets OMP_WAIT_POLICY for its own process: keep that out of the other tests
        monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    path = ROOT / name if name == "app.py" else ROOT / "app_pages" / name
    return AppTest.from_file(str(path), default_timeout=TIMEOUT)


def boxes_table(at: AppTest):
    """Explore's table of boxes (``#``, ``x``, ``y``, …)."""
    return next(frame.value for frame in at.dataframe if "x" in frame.value.columns)


def top_table(at: AppTest):
    """Explore's top-k table (class, probability)."""
    return next(frame.value for frame in at.dataframe if list(frame.value.columns) == ["class", "probability"])


def boxes_caption(at: AppTest) -> str:
    """The caption of Explore's boxes picture."""
    return next(c for c in image_captions(at) if ", recipe " in c)


def heat_caption(at: AppTest) -> str:
    """The caption of Explore's heatmap."""
    return next(c for c in image_captions(at) if " of “" in c)


def views_computed(*uses: tuple[str, bool, str | None]) -> int:
    """How many views the app computes for one image and class, for these (method, tta, recipe) uses:
    each (method, view) once, whatever page or recipe asks for it again."""
    model, meta = random_head_model("resnet18", 4)
    return len({(method, view) for method, tta, recipe in uses
                for view in Localizer(model, meta, method=method, tta=tta, device="cpu").views(recipe)})


EXPLORE_FIRST = [("cam", False, PLAIN_MAPS), ("cam", False, DEFAULT_RECIPE)]  # ranking + the default recipe's maps
#: What Compare computes for a new image under the default recipe: every method it offers, under every recipe, but
#: those computed when asked (Score-CAM).
COMPARE_CHEAP = [("cam", False, DEFAULT_RECIPE), *((m.name, m.tta, recipe) for m in offered(DEFAULT_RECIPE)
                                                   if not m.opt_in for recipe in RECIPES)]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def image_captions(at: AppTest) -> list[str]:
    return [caption for image in at.get("image") for caption in image.captions]


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


@pytest.fixture
def pictures(monkeypatch):
    """``pictures(at)``: the pictures the page shows, decoded to RGB arrays, in page order (the bytes
    Streamlit stores are kept as it stores them)."""
    stored: dict[str, bytes] = {}
    store = MemoryMediaFileStorage.load_and_get_id

    def store_and_keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = store(self, path_or_data, mimetype, kind, filename)
        stored[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", store_and_keep)
    return lambda at: [np.asarray(Image.open(io.BytesIO(stored[shown.url.rsplit("/", 1)[1].split(".")[0]])).convert(
        "RGB")) for element in at.get("image") for shown in element.proto.imgs]


@pytest.fixture
def tag_layouts(monkeypatch):
    """The ``(boxes, layout)`` of every tag layout the pictures make (:func:`camloc.viz.layout_tags`)."""
    made = []
    layout = viz.layout_tags

    def keep(boxes, size, measure):
        made.append((list(boxes), layout(boxes, size, measure)))
        return made[-1][1]

    monkeypatch.setattr(viz, "layout_tags", keep)
    return made


def overlapping(tags) -> bool:
    return any(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
               for i, a in enumerate(tags) for b in tags[:i])


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
    top = top_table(at)
    assert len(top) == 5 and top["probability"].is_monotonic_decreasing
    at.selectbox(key="class_name").select_index(1).run()
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
    at.sidebar.selectbox(key="method").set_value("Grad-CAM++").run()
    no_exception(at)
    assert len(boxes_table(at)) == 1 and at.session_state["forward_passes"] == cam_views + 1
    at.selectbox(key="class_name").select_index(0).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == cam_views + 1  # Grad-CAM++ of every class came from that pass


def test_tta_reuses_the_plain_pass_and_caches_its_views(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("seed").run()
    at.sidebar.selectbox(key="method").set_value("TTA-CAM").run()
    no_exception(at)
    tta = views_computed(*EXPLORE_FIRST, ("cam", True, PLAIN_MAPS))
    assert tta == 6 and at.session_state["forward_passes"] == 6  # the plain pass + the 5 other views, once
    assert "TTA-CAM of" in heat_caption(at)
    at.selectbox(key="class_name").select_index(2).run()
    at.sidebar.radio(key="threshold_mode").set_value("Fraction of max").run()
    at.sidebar.selectbox(key="method").set_value("CAM").run()
    at.sidebar.selectbox(key="method").set_value("TTA-CAM").run()
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
        assert f"recipe {name}" in boxes_caption(at)


def test_a_new_image_selects_its_own_top_class(monkeypatch, tmp_path):
    """Bug 1: the class picker kept the previous image's class after a new image."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    classes = at.selectbox(key="class_name")
    first_top = classes.value
    picked = classes.options[-1]
    classes.set_value(picked).run()
    at.sidebar.selectbox(key="example").set_value("shapes_000002.jpg").run()
    no_exception(at)
    top = top_table(at)["class"][0]
    assert at.selectbox(key="class_name").value == top != picked
    assert f"of “{top}”" in heat_caption(at)
    at.sidebar.selectbox(key="example").set_value("shapes_000001.jpg").run()
    assert at.selectbox(key="class_name").value == picked  # picked for this image: stays picked
    upload = (EXAMPLES / "shapes_000005.jpg").read_bytes()
    at.sidebar.file_uploader(key="uploads").set_value(("mine.jpg", upload, "image/jpeg")).run()
    assert at.selectbox(key="class_name").value == top_table(at)["class"][0] != first_top


def test_a_new_model_selects_its_own_top_class(monkeypatch, coco_checkpoints):
    at = page("explore.py", monkeypatch, coco_checkpoints).run()
    at.selectbox(key="class_name").select_index(3).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    assert at.selectbox(key="class_name").value == top_table(at)["class"][0]


def test_explore_draws_the_best_boxes_lists_all_and_says_how_many_are_hidden(monkeypatch, tmp_path):
    """Issue 17: the default recipe drew every box (down to scores of 1e-4) and the table gave the box as four
    unlabelled numbers, not sorted by score, with fewer digits than the picture."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("multilevel-tta").run()
    assert at.sidebar.radio(key="box_scale").value == "full"  # multilevel-tta's boxes: at the image's resolution
    at.sidebar.selectbox(key="recipe").set_value(DEFAULT_RECIPE).run()
    assert at.sidebar.radio(key="box_scale").value == 2  # the default's (multilevel-flip): at 2× the feature grid
    table = boxes_table(at)
    total = len(table)
    assert total >= 3 and list(table.columns[:6]) == ["#", "x", "y", "w", "h", "score"]
    assert table["#"].tolist() == list(range(1, total + 1)) and table["score"].is_monotonic_decreasing
    config = json.loads(next(f for f in at.dataframe if "x" in f.value.columns).proto.columns)
    assert config["score"]["type_config"]["format"] == "%.3g"  # 3 significant digits, as on the picture
    at.sidebar.slider(key="most_boxes").set_value(2).run()
    assert boxes_caption(at).startswith(f"2 of {total} boxes drawn ({total - 2} hidden: at most 2, none below "
                                        "0.1 × the best score)")
    assert len(boxes_table(at)) == total  # the table lists them all, numbered as on the picture
    at.sidebar.slider(key="most_boxes").set_value(50).run()
    at.sidebar.slider(key="box_floor").set_value(0.0).run()
    assert boxes_caption(at).startswith(f"{total} boxes, recipe")


def test_a_checkpoint_overwritten_in_place_is_run_again(monkeypatch, coco_checkpoints):
    """The maps are cached per model key, which names the checkpoint's modification time: a checkpoint that
    a new training epoch overwrote is not shown with the old one's maps."""
    at = page("explore.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    before = top_table(at)
    path = coco_checkpoints / "coco.pt"
    save_checkpoint(*random_head_model("resnet18", 80, seed=1), path)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    at.run()
    no_exception(at)
    assert not top_table(at).equals(before)


def test_explore_shows_iou_for_annotated_examples(monkeypatch, tmp_path):
    first = EXAMPLE_ANNOTATIONS["annotations"][0]
    name = next(im["file_name"] for im in EXAMPLE_ANNOTATIONS["images"] if im["id"] == first["image_id"])
    category = next(c["name"] for c in EXAMPLE_ANNOTATIONS["categories"] if c["id"] == first["category_id"])
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="example").set_value(name).run()
    at.selectbox(key="class_name").set_value(category).run()
    no_exception(at)
    ious = boxes_table(at)["IoU with GT"]
    assert ious.notna().all() and ious.max() > 0
    count = sum(a["image_id"] == first["image_id"] and a["category_id"] == first["category_id"]
                for a in EXAMPLE_ANNOTATIONS["annotations"])
    objects = f"{count} “{category}” object" + ("s" if count > 1 else "")
    assert f"{objects} in the ground truth of {name} (white box" in texts(at.caption)
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
        at.selectbox(key="class_name").set_value(class_name).run()
        no_exception(at)
        assert "Ground truth" not in texts(at.caption)
        assert "IoU with GT" not in boxes_table(at).columns


def animated(fmt: str, frames: int = 3) -> bytes:
    """An animated GIF or WebP of ``frames`` different 96×128 frames."""
    pictures = [Image.fromarray(gradient_image(96, 128, seed=i)) for i in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=fmt, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    return buffer.getvalue()


def test_animated_uploads_show_their_first_frame_and_tiny_images_are_refused(monkeypatch, tmp_path):
    """Issue 17: an animated GIF was refused by the uploader (a red "!") while the not-an-image message listed
    GIF; a 1×1 PNG was accepted (a black box panel, panels of different sizes)."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    accepted = at.sidebar.file_uploader(key="uploads").proto.type
    assert {".gif", ".webp", ".jpg", ".png", ".tif"} <= set(accepted)  # what the browser lets through
    for name, fmt in (("clip.gif", "GIF"), ("clip.webp", "WEBP")):
        at.sidebar.file_uploader(key="uploads").set_value((name, animated(fmt), f"image/{fmt.lower()}")).run()
        no_exception(at)
        assert not at.error and image_captions(at)[0] == f"{name} (128×96, the first of its 3 frames)"
    tiny = image_bytes(np.full((1, 1, 3), 200, np.uint8))
    at.sidebar.file_uploader(key="uploads").set_value(("dot.png", tiny, "image/png")).run()
    no_exception(at)
    assert [e.value for e in at.error] == ["dot.png: the image is 1×1 pixels, below the 32×32 the app needs (one "
                                           "cell of the network's feature grid); upload a larger image"]
    assert not at.get("image")


def test_a_new_upload_is_the_one_shown(monkeypatch, tmp_path):
    """Issue 17: with three photos uploaded and one selected, a fourth was listed but not shown."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    photos = [(f"{name}.png", image_bytes(gradient_image(60, 80, seed=i)), "image/png")
              for i, name in enumerate("abcd")]
    at.sidebar.file_uploader(key="uploads").set_value(photos[:3]).run()
    assert at.selectbox(key="shown_image").value == "c.png"  # the last one added
    at.selectbox(key="shown_image").set_value("b.png").run()
    assert image_captions(at)[0].startswith("b.png")
    at.sidebar.file_uploader(key="uploads").set_value(photos).run()
    no_exception(at)
    assert at.selectbox(key="shown_image").value == "d.png" and image_captions(at)[0].startswith("d.png")
    at.selectbox(key="shown_image").set_value("a.png").run()
    at.sidebar.slider(key="alpha").set_value(0.8).run()  # another rerun: the pick stays
    assert image_captions(at)[0].startswith("a.png")


def test_uploads_good_and_bad(monkeypatch, tmp_path):
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.file_uploader(key="uploads").set_value(("notes.png", b"this is not an image", "image/png")).run()
    no_exception(at)
    assert any("not an image file" in e.value for e in at.error)
    jpeg = image_bytes(gradient_image(200, 300), "JPEG")
    at.sidebar.file_uploader(key="uploads").set_value(("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")).run()
    no_exception(at)
    assert any("truncated" in e.value for e in at.error)
    at.sidebar.button(key="clear_uploads").click().run()  # uploads add up: forget the two broken ones
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
def test_a_real_photo_with_its_coco_ground_truth(monkeypatch, tmp_path, pictures, tag_layouts, coco80_geometry):
    """The issue-17 walk: a real COCO photo, its ground truth and the shared COCO-80 model — readable boxes,
    every one tagged (ground truth too), one probability per class, and no IoU where the class is absent."""
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), tmp_path / COCO80.with_suffix(suffix).name)
    zebra = "000000104455.jpg"
    at = page("app.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("multilevel-flip").run()  # two views: a fast walk on a busy CPU
    at.sidebar.selectbox(key="model_label").set_value(COCO80.name).run()
    at.sidebar.text_input(key="gt_file").set_value(str(VAL_ANN)).run()
    at.sidebar.file_uploader(key="uploads").set_value((zebra, (VAL_IMAGES / zebra).read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.selectbox(key="class_name").value == "zebra"
    assert "2 “zebra” objects in the ground truth of 000000104455.jpg (white boxes GT1–GT2)" in texts(at.caption)
    table = boxes_table(at)
    assert table["IoU with GT"].max() > 0.3  # a weak model (see ../shared/README.md), but on target
    assert len(table) > 5 and boxes_caption(at).startswith(f"5 of {len(table)} boxes drawn")
    boxed = pictures(at)[image_captions(at).index(boxes_caption(at))]
    assert count_tags(boxed, GROUND_TRUTH_COLOR, 24) == 2  # ground-truth tags are not hidden under others
    assert count_tags(boxed, distinct_colors(1)[0], 24) == 5  # the 5 boxes drawn, each tagged
    p_zebra = format_score(top_table(at)["probability"][0])
    assert f"(p = {p_zebra})" in heat_caption(at)  # the table and the caption give one figure
    at.sidebar.slider(key="most_boxes").set_value(50).run()
    at.sidebar.slider(key="box_floor").set_value(0.0).run()
    boxed = pictures(at)[image_captions(at).index(boxes_caption(at))]
    boxes, layout = tag_layouts[-1]  # all of them drawn, each with its label (or key) on a tag of its own
    assert len(boxes) == 2 + len(table) and all(layout) and not overlapping([tag for _, tag in layout])
    for box, (text, (x0, y0, x1, y1)) in zip(boxes, layout):  # on top, in the box's colour
        assert text in (box.label, box.key)
        inside = boxed[round(y0) + 1:round(y1) - 1, round(x0) + 1:round(x1) - 1].astype(int)
        assert (np.abs(inside - box.color).max(-1) <= 24).mean() > 0.5
    at.sidebar.slider(key="most_boxes").set_value(5).run()
    at.sidebar.slider(key="box_floor").set_value(0.1).run()
    at.switch_page("app_pages/compare.py").run()
    no_exception(at)
    table = compare_table(at)
    assert table["IoU of top box"].max() > 0.3 and table["objects found (IoU ≥ 0.5)"].str.endswith("/2").all()
    assert f"“zebra” in {zebra} (p = {p_zebra}, " in texts(at.caption)  # the same figure as on Explore
    at.selectbox(key="class_name").set_value("toothbrush").run()  # not in this photo
    no_exception(at)
    assert "IoU of top box" not in compare_table(at).columns and "0/0" not in texts(at.caption)
    assert "“toothbrush” is not in the ground truth of this image" in texts(at.caption)
    at.switch_page("app_pages/explore.py").run()
    assert not any("IoU with GT" in frame.value.columns for frame in at.dataframe)  # its boxes, if any: no IoU
    assert f"“toothbrush” is not in the ground truth of {zebra}: no IoU to show." in texts(at.caption)


@pytest.mark.realdata
def test_explore_with_a_real_coco_model_and_image(monkeypatch, tmp_path, coco80_geometry):
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), tmp_path / COCO80.with_suffix(suffix).name)
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="model_label").set_value(COCO80.name).run()
    at.sidebar.file_uploader(key="uploads").set_value(
        ("dog.jpg", (VAL_IMAGES / "000000005001.jpg").read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert not at.info  # a real model on a real photo: no demo hint
    classes = at.selectbox(key="class_name").options
    assert len(classes) == 80 and set(classes) >= {"person", "toothbrush"}
    before = boxes_table(at).to_string()
    at.selectbox(key="class_name").set_value(classes[1]).run()  # the second class: boxes of its own
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
    at.selectbox(key="class_name").set_value("giraffe").run()
    passes = at.session_state["forward_passes"]
    for target in (f"app_pages/{name}.py" for name in ("all_classes", "pr_curves", "compare", "explore")):
        at.switch_page(target).run()
        no_exception(at)
        if target == "app_pages/pr_curves.py":
            continue
        assert at.sidebar.text_input(key="checkpoint_folder").value == str(coco_checkpoints)
        assert at.sidebar.selectbox(key="model_label").value == "coco.pt"
        assert "Your upload: street.png" in texts(at.sidebar.caption)
        if target != "app_pages/all_classes.py":
            assert at.selectbox(key="class_name").value == "giraffe"
    assert image_captions(at)[0].startswith("street.png")
    # only the views Compare adds (gradient methods, TTA, the recipes' mirror views); none for All classes
    added = views_computed(*COMPARE_CHEAP) - views_computed(*EXPLORE_FIRST)
    assert at.session_state["forward_passes"] == passes + added
    at.sidebar.button(key="clear_uploads").click().run()
    assert image_captions(at)[0].startswith("shapes_")


def test_one_probability_per_image_and_class_on_every_page(monkeypatch, coco_checkpoints):
    """Issue 17: Explore's top-k table (one view) and its caption (averaged with the mirror image) gave two
    probabilities for one class, and Compare a third. Each page now shows the figure the boxes use, and
    says which views it averages."""
    at = page("app.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    top = top_table(at).iloc[0]
    figure = format_score(top["probability"])
    assert f"of “{top['class']}” (p = {figure})" in heat_caption(at)
    views = views_label(((1.0, False), (1.0, True)))  # the default recipe's (multilevel-flip) two
    assert f"Probabilities of {views}, as the boxes use them." in texts(at.caption)
    at.switch_page("app_pages/compare.py").run()
    assert f"“{top['class']}” in shapes_000001.jpg (p = {figure}, {views}" in texts(at.caption)
    at.switch_page("app_pages/all_classes.py").run()
    legend = at.dataframe[0].value
    assert legend["class"][0] == top["class"] and format_score(legend["probability"][0]) == figure
    at.switch_page("app_pages/explore.py").run()
    at.sidebar.selectbox(key="recipe").set_value("seed").run()  # one view: another figure, said so
    assert "Probabilities of one view of the image, as the boxes use them." in texts(at.caption)
    table = top_table(at).set_index("class")
    assert f"(p = {format_score(table['probability'][top['class']])})" in heat_caption(at)


def test_all_classes_page(monkeypatch, tmp_path):
    at = page("all_classes.py", monkeypatch, tmp_path).run()
    no_exception(at)
    legend = at.dataframe[0]
    assert len(legend.value) == 4 and legend.value["colour"].eq("").all()  # a swatch, not a colour code
    swatches = re.findall(r"background-color: (#[0-9a-f]{6})", legend.proto.arrow_data.styler.styles)
    assert swatches == [color_hex(c) for c in distinct_colors(4)]  # the colours of the overlay, in order
    shown = pa.ipc.open_stream(legend.proto.arrow_data.styler.display_values).read_all().to_pandas()
    assert shown["probability"].tolist() == [format_score(p) for p in legend.value["probability"]]  # not 0.252000
    assert any(c.startswith("Each map, 0 at its minimum") for c in image_captions(at))  # the grid's colour bar
    at.multiselect(key="overlay_classes").set_value(list(legend.value["class"][:2])).run()
    at.sidebar.slider(key="grid_k").set_value(3).run()
    no_exception(at)
    assert len(at.dataframe[0].value) == 2
    assert at.session_state["forward_passes"] == views_computed(("cam", False, DEFAULT_RECIPE))


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

def compare_table(at: AppTest):
    """Compare's method × recipe table."""
    return next(frame.value for frame in at.dataframe if "recipe" in frame.value.columns and "boxes" in frame.value)


def test_compare_shows_the_methods_and_recipes_with_iou_and_a_costly_method_when_asked(monkeypatch, tmp_path):
    """Issue 22, 1: Compare computed every method under every recipe, six views of Score-CAM included (about 4
    minutes for a new photo on this CPU). It computes the others, and Score-CAM when its button asks."""
    at = page("compare.py", monkeypatch, tmp_path).run()
    no_exception(at)
    shown = offered(DEFAULT_RECIPE)
    cheap = [m.label for m in shown if not m.opt_in]
    assert {"CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "LayerCAM fused"} <= set(cheap)
    assert [m.label for m in shown if m.opt_in] == ["Score-CAM"] and "TTA-CAM" in cheap  # the default: two views
    assert "TTA-CAM" not in [m.label for m in offered("multilevel-tta")]  # a recipe that averages the TTA views
    captions = [c for c in image_captions(at) if not c.startswith("The maps")]  # not the colour bar's
    assert [c.split(":")[0].split(" (")[0] for c in captions] == [*cheap, *RECIPES]
    assert all("top box IoU" in c for c in captions)  # the example is annotated and the model knows its classes
    table = compare_table(at)
    assert len(table) == len(cheap) * len(RECIPES) and list(table["method"].unique()) == cheap
    assert table["IoU of top box"].between(0, 1).all() and table["IoU of top box"].max() > 0.3
    first = views_computed(*COMPARE_CHEAP)
    assert at.session_state["forward_passes"] == first  # each method's views, once; none of Score-CAM
    assert "Score-CAM: not computed yet (≈ " in texts(at.caption)
    at.button(key="compute_scorecam").click().run()
    no_exception(at)
    assert at.session_state["forward_passes"] == first + 1  # Score-CAM: one view of the image, as said
    captions = [c for c in image_captions(at) if not c.startswith("The maps")]
    assert [c.split(":")[0].split(" (")[0] for c in captions] == [*(m.label for m in shown), *RECIPES]  # in order
    assert "Score-CAM (one view)" in compare_table(at)["method"].tolist()
    at.selectbox(key="class_name").select_index(1).run()
    # every method computed every class at once, but a costly one (fused LayerCAM) computes the class shown
    costly = [(method, tta, recipe) for method, tta, recipe in COMPARE_CHEAP if MAP_METHODS[method].costly
              and MAP_METHODS[method].per_class]
    assert costly and at.session_state["forward_passes"] == first + 1 + views_computed(*costly)
    at.radio(key="compare_maps").set_value("Grad-CAM").run()
    at.sidebar.slider(key="alpha").set_value(0.2).run()
    no_exception(at)
    assert at.session_state["forward_passes"] == first + 1 + views_computed(*costly)


def test_compare_without_ground_truth(monkeypatch, coco_checkpoints):
    at = page("compare.py", monkeypatch, coco_checkpoints).run()
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    assert "no ground truth for this image and class" in texts(at.caption)
    assert "IoU of top box" not in compare_table(at).columns


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
    classes = at.selectbox(key="class_name").options
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
    colours = [color_hex(c) for c in distinct_colors(len(spec["data"]))]
    assert [trace["line"]["color"] for trace in spec["data"]] == colours  # far apart, in the legend's order
    assert all(trace["line"]["shape"] == "hv" for trace in spec["data"])  # steps, one hover for all classes
    assert spec["layout"]["hovermode"] == "x unified"
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
    per_class = at.dataframe[-1].value  # issue 17: the WSOL block's rows were shown here ("None" × 6)
    expected = sorted((r for r in metrics["per_class"] if r.get("AP") is not None), key=lambda r: -r["AP50"])
    assert per_class["class"].tolist() == [r["name"] for r in expected]
    for column, key in (("objects", "num_gt"), ("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"),
                        ("VOC AP50", "voc_AP50")):
        assert per_class[column].tolist() == pytest.approx([r[key] for r in expected])
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


def tables_with(at: AppTest, column: str) -> list:
    """The tables (DataFrames) of the page that have ``column``."""
    return [frame.value for frame in at.dataframe if column in frame.value.columns]


def test_dataset_browser(monkeypatch, tmp_path):
    at = page("dataset.py", monkeypatch).run()
    no_exception(at)
    assert tables_with(at, "score") and "the **demo** model" in texts(at.info)  # the demo's own detections
    at.sidebar.text_input(key="ds_dets").set_value("").run()
    assert not tables_with(at, "score") and "Give a detections file" in texts(at.caption)
    gt = EXAMPLE_ANNOTATIONS
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=0.5)
            for a in gt["annotations"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    at.sidebar.text_input(key="ds_dets").set_value(str(tmp_path / "dets.json")).run()
    no_exception(at)
    [table] = tables_with(at, "score")
    assert len(table) >= 1 and (table["IoU with GT"] == 1.0).all()
    [truth] = tables_with(at, "crowd")
    assert set(table["best GT"]) <= set(truth["#"])  # the detections' ground truth, by the keys on the picture
    at.sidebar.slider(key="ds_min_score").set_value(0.9).run()
    no_exception(at)
    assert not tables_with(at, "score") and "No detection on this image with score ≥ 0.90" in texts(at.info)
    at.number_input(key="ds_index").set_value(2).run()
    at.sidebar.multiselect(key="ds_classes").set_value([gt["categories"][0]["name"]]).run()
    no_exception(at)
    at.sidebar.text_input(key="ds_ann").set_value(str(tmp_path / "nope.json")).run()
    no_exception(at)
    assert any("does not exist" in e.value for e in at.error)
    at.sidebar.text_input(key="ds_images").set_value(str(tmp_path / "empty")).run()
    assert any("is not a folder" in e.value for e in at.error)


def test_dataset_browser_tags_every_box(monkeypatch, tmp_path, pictures):
    """Issue 17: an image with 10 detections showed 3 labels and left the other boxes unlabelled. Every box
    now has a tag (its label, or its key where no label fits), and tables resolve the keys."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (640, 480), (128, 128, 128)).save(tmp_path / "images" / "street.png")
    categories = [{"id": i, "name": f"thing {i}"} for i in range(1, 14)]
    truth = [{"id": i, "image_id": 7, "category_id": 11 + i, "bbox": [20 + 150 * i, 300, 120, 150], "area": 1.0,
              "iscrowd": 0} for i in range(3)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 7, "file_name": "street.png", "width": 640,
                                                               "height": 480}], "annotations": truth,
                                                   "categories": categories}))
    dets = [{"image_id": 7, "category_id": i + 1, "bbox": [100 + 10 * i, 80 + 8 * i, 300, 250], "score": 0.9 - 0.05 * i}
            for i in range(10)]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    at = page("dataset.py", monkeypatch).run()
    for key, value in (("ds_images", tmp_path / "images"), ("ds_ann", tmp_path / "ann.json"),
                       ("ds_dets", tmp_path / "dets.json")):
        at.sidebar.text_input(key=key).set_value(str(value)).run()
    at.sidebar.slider(key="ds_min_score").set_value(0.0).run()
    at.sidebar.slider(key="most_boxes").set_value(50).run()  # every box drawn
    at.sidebar.slider(key="box_floor").set_value(0.0).run()
    no_exception(at)
    shown_truth, shown_dets = pictures(at)
    for picture, boxes in ((shown_dets, dets), (shown_truth, truth)):
        for box in boxes:
            x, y, w, h = box["bbox"]
            colour = tuple(int(c) for c in picture[y + h - 2, x + w // 2])  # its bottom edge
            assert count_tags(picture, colour, 24) >= 1, f"box {box} has no tag"
    [table] = tables_with(at, "score")
    assert table["#"].tolist() == list(range(1, 11)) and table["class"].tolist() == [f"thing {i}" for i in range(1, 11)]
    assert tables_with(at, "crowd")[0]["#"].tolist() == ["GT1", "GT2", "GT3"]


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


# ------------------------------------------------------------------------------------------ detectors

@pytest.fixture
def detector_checkpoints(tmp_path):
    """A folder with a detector of the demo model's classes (its backbone) whose class-1 score is forced high, so
    that it surely draws boxes; and the demo classifier beside it."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _, demo_meta = load_model(DEMO_CHECKPOINT)
    model, meta = build_detector("fasterrcnn_mobilenet_v2_fpn", demo_meta["class_names"], demo_meta["category_ids"],
                                 DEMO_CHECKPOINT, 96)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 20.0
    atomic_torch_save(detector_payload(model, meta), folder / "det.pt")
    shutil.copy(DEMO_CHECKPOINT, folder / "demo.pt")
    return folder


def test_a_detector_shows_its_boxes_on_explore_and_compare(monkeypatch, detector_checkpoints):
    at = page("app.py", monkeypatch, detector_checkpoints).run()
    labels = at.sidebar.selectbox(key="model_label").options
    assert "det.pt (detector)" in labels and "demo.pt" in labels  # listed, and marked
    at.sidebar.selectbox(key="model_label").set_value("det.pt (detector)").run()
    no_exception(at)
    assert "A detector has no class map" in texts(at.info)
    name = at.sidebar.selectbox(key="example").value
    detector = Detector.from_checkpoint(detector_checkpoints / "det.pt", device="cpu")
    expected = [d for d in detector.predict(EXAMPLES / name) if d["category_id"] == detector.category_ids[0]]
    assert at.sidebar.selectbox(key="class_name").value == detector.class_names[0]  # the class scored highest
    table = at.dataframe[0].value
    assert len(expected) >= 1 and len(table) == len(expected)
    assert np.allclose(table["score"], sorted((d["score"] for d in expected), reverse=True))
    image_id = next(im["id"] for im in EXAMPLE_ANNOTATIONS["images"] if im["file_name"] == name)
    truth = [a for a in EXAMPLE_ANNOTATIONS["annotations"]
             if a["category_id"] == detector.category_ids[0] and a["image_id"] == image_id]
    assert ("IoU with GT" in table.columns) == bool(truth)
    assert any(f"of “{detector.class_names[0]}”, detector fasterrcnn_mobilenet_v2_fpn" in c
               for c in image_captions(at))
    for target in ("app_pages/compare.py", "app_pages/all_classes.py"):  # the model stays chosen on every page
        at.switch_page(target).run()
        no_exception(at)
        assert at.sidebar.selectbox(key="model_label").value == "det.pt (detector)"
        assert "A detector has no class map" in texts(at.info)
        if target == "app_pages/compare.py":
            row = at.dataframe[0].value
            assert row["model"][0] == "fasterrcnn_mobilenet_v2_fpn" and row["boxes"][0] == len(expected)
    at.switch_page("app_pages/explore.py").run()
    at.sidebar.selectbox(key="model_label").set_value("demo.pt").run()  # back to maps
    no_exception(at)
    assert "A detector has no class map" not in texts(at.info) and " of “" in heat_caption(at)


# ------------------------------------------------------------------------------------------ issue 22

def upload(at: AppTest, *names: str, seed: int = 0) -> AppTest:
    """Upload small generated PNGs named ``names`` (each a different picture) with the sidebar's uploader."""
    files = [(name, image_bytes(gradient_image(60, 80, seed=seed + i)), "image/png") for i, name in enumerate(names)]
    return at.sidebar.file_uploader(key="uploads").set_value(files if len(files) > 1 else files[0]).run()


def test_an_upload_after_a_page_change_adds_to_the_earlier_ones(monkeypatch, tmp_path):
    """Issue 22, 3: upload A and B, visit another page and come back, upload C — only C remained and the image
    picker was gone. Uploads are one set for every page, keyed by content; a button removes one."""
    at = page("app.py", monkeypatch, tmp_path).run()
    upload(at, "a.png", "b.png")
    assert at.selectbox(key="shown_image").options == ["a.png", "b.png"]
    at.switch_page("app_pages/all_classes.py").run()
    at.switch_page("app_pages/explore.py").run()
    upload(at, "c.png", seed=2)
    no_exception(at)
    assert at.selectbox(key="shown_image").options == ["a.png", "b.png", "c.png"]
    assert at.selectbox(key="shown_image").value == "c.png" and image_captions(at)[0].startswith("c.png")
    at.switch_page("app_pages/all_classes.py").run()
    upload(at, "a-again.png")  # the same bytes as a.png: kept once, and shown
    assert at.selectbox(key="shown_image").options == ["a.png", "b.png", "c.png"]
    assert at.selectbox(key="shown_image").value == "a.png"
    at.button(key="remove_upload").click().run()
    no_exception(at)
    assert at.selectbox(key="shown_image").options == ["b.png", "c.png"]
    at.switch_page("app_pages/explore.py").run()
    assert at.selectbox(key="shown_image").options == ["b.png", "c.png"]
    at.sidebar.button(key="clear_uploads").click().run()
    assert image_captions(at)[0].startswith("shapes_")


SETTINGS = ("slider", "selectbox", "multiselect", "number_input", "radio", "checkbox", "toggle")


def another_value(widget):
    """A value of ``widget`` other than its current one (``None`` when it has no other)."""
    kind, value = type(widget).__name__, widget.value
    if kind == "Slider":
        step = widget.proto.step
        low, high = widget.proto.min, widget.proto.max
        return round(value + step if value + step <= high else low, 6) if high > low else None
    if kind == "NumberInput":
        high = widget.proto.max if widget.proto.has_max else value + 1
        return value + 1 if value + 1 <= high else (value - 1 if value > widget.proto.min else None)
    if kind == "Multiselect":
        return [o for o in widget.options if o not in value][:1] or value[:-1] or None
    if kind in ("Selectbox", "Radio"):  # options come formatted: map them back (box resolutions and methods are)
        raw = {}
        for candidate in (*widget.options, *BOX_SCALES, *METHODS):
            try:
                raw[str(widget.format_func(candidate))] = candidate
            except KeyError:  # a formatted option given to a format_func that looks values up
                continue
        return next((raw[o] for o in widget.options if o in raw and o != str(widget.format_func(value))), None)
    return not value


def page_settings(at: AppTest) -> dict:
    """``{key: widget}`` of every keyed setting on the page (sidebar and main), text fields and buttons aside."""
    return {w.key: w for kind in SETTINGS for w in at.get(kind) if w.key}


@pytest.mark.parametrize("name", ["explore.py", "all_classes.py", "compare.py", "pr_curves.py", "dataset.py",
                                  "training_runs.py"])
def test_every_setting_of_a_page_survives_a_visit_to_another_page(name, monkeypatch, tmp_path, eval_folder):
    """Issue 22, 5: the Dataset browser's image number, class filter and score floor, the PR curves' IoU and All
    classes' "Hide heat below" came back at their defaults after a visit to another page."""
    write_log(tmp_path / "runs" / "r1", [{"epoch": 1, "train_loss": 1.0}])
    write_log(tmp_path / "runs" / "r2", [{"epoch": 1, "train_loss": 0.5}])
    at = page("app.py", monkeypatch, tmp_path / "runs").run()
    at.switch_page(f"app_pages/{name}").run()
    if name == "pr_curves.py":
        at.text_input(key="eval_folder").set_value(str(eval_folder)).run()
    keys = sorted(page_settings(at))
    assert keys, name
    for key in keys:
        widget = page_settings(at).get(key)
        if widget is None:  # another setting's change took it away (a recipe without a threshold)
            continue
        value = another_value(widget)
        if value is None:
            continue
        widget.set_value(value).run()
        no_exception(at)
        expected = page_settings(at)[key].value
        at.switch_page("app_pages/training_runs.py" if name != "training_runs.py" else "app_pages/pr_curves.py").run()
        at.switch_page(f"app_pages/{name}").run()
        no_exception(at)
        assert page_settings(at)[key].value == expected, (name, key)


def test_the_model_stays_until_the_user_picks_another_and_a_change_says_so(monkeypatch, coco_checkpoints, tmp_path):
    """Issue 22, 6: changing the Training runs' folder silently switched Explore's model to the demo model."""
    at = page("app.py", monkeypatch, coco_checkpoints).run()
    assert not at.toast
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    assert [t.value for t in at.toast] == ["Model: now coco.pt, was Demo: synthetic shapes (offline, bundled)."]
    at.switch_page("app_pages/training_runs.py").run()
    at.sidebar.text_input(key="runs_folder").set_value(str(tmp_path / "elsewhere")).run()
    no_exception(at)
    at.switch_page("app_pages/explore.py").run()
    no_exception(at)
    assert at.sidebar.text_input(key="checkpoint_folder").value == str(coco_checkpoints)
    assert at.sidebar.selectbox(key="model_label").value == "coco.pt" and not at.toast
    at.sidebar.text_input(key="checkpoint_folder").set_value(str(tmp_path / "empty")).run()  # lists no coco.pt
    no_exception(at)
    kept = f"coco.pt (from {coco_checkpoints})"
    assert at.sidebar.selectbox(key="model_label").value == kept and not at.toast
    assert len(at.selectbox(key="class_name").options) == 80  # still the COCO model's classes
    at.switch_page("app_pages/all_classes.py").run()
    assert at.sidebar.selectbox(key="model_label").value == kept
    (coco_checkpoints / "coco.pt").unlink()  # its file is gone: the demo model, said so
    at.run()
    no_exception(at)
    assert at.sidebar.selectbox(key="model_label").value.startswith("Demo")
    assert [t.value for t in at.toast] == [f"Model: now Demo: synthetic shapes (offline, bundled), was {kept} "
                                           f"({kept} is no longer available)."]


def picture_rows(node) -> list[int]:
    """How many pictures each row of columns under ``node`` holds side by side (depth first, in page order)."""
    rows = []
    for child in getattr(node, "children", {}).values():
        columns = [c for c in getattr(child, "children", {}).values() if type(c.proto).__name__ == "Column"] \
            if type(child).__name__ == "Block" else []
        pictures = sum(1 for c in columns for element in c.children.values() if type(element).__name__ == "Image")
        if columns and pictures:
            rows.append(pictures)
        else:
            rows += picture_rows(child)
    return rows


def test_compare_tiles_come_four_a_row_with_a_table_of_their_boxes(monkeypatch, tmp_path):
    """Issue 22, 8: ten tiles a row at ~104 px, tags ~5 px tall, captions over 5–6 lines, no table of the boxes."""
    at = page("compare.py", monkeypatch, tmp_path).run()
    no_exception(at)
    rows = picture_rows(at.main)
    cheap = [m.label for m in offered(DEFAULT_RECIPE) if not m.opt_in]
    assert max(rows) == 4 and sum(rows) == len(cheap) + len(RECIPES)
    by_method, by_recipe = (next(f.value for f in at.dataframe if column in f.value.columns and "#" in f.value)
                            for column in ("method", "recipe"))
    assert list(by_method["method"].unique()) == cheap and list(by_recipe["recipe"].unique()) == list(RECIPES)
    assert list(by_method.columns[:8]) == ["method", "#", "x", "y", "w", "h", "score", "IoU with GT"]
    for label, caption in zip(cheap, [c for c in image_captions(at) if not c.startswith("The maps")]):
        drawn = (by_method["method"] == label).sum()  # the boxes its picture draws, numbered as on it
        assert caption.startswith(f"{label}") and (f"{drawn} of " in caption or f": {drawn} box" in caption)


def test_methods_state_their_cost_and_score_cam_computes_one_view_with_progress(monkeypatch, tmp_path):
    """Issue 22, 2: Score-CAM took 219 s on Explore (six views) with no warning and no progress, and no method
    said what it costs."""
    import streamlit.delta_generator as dg

    import app_pages.analysis
    progress_texts = []
    real = dg.DeltaGenerator.progress

    def watched(self, value, text=None, **kwargs):
        progress_texts.append(text)
        return real(self, value, text=text, **kwargs)

    monkeypatch.setattr(dg.DeltaGenerator, "progress", watched)
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("multilevel-tta").run()  # a recipe of six views
    picker = at.sidebar.selectbox(key="method")
    for method in offered("multilevel-tta")[1:]:
        assert f"- {method.label}: ≈ " in picker.help and f"{method.label} · ≈ " in " ".join(picker.options)
    assert "TTA-CAM is not offered: recipe multilevel-tta already averages the six TTA views." in picker.help
    passes = at.session_state["forward_passes"]
    monkeypatch.setattr(app_pages.analysis, "PROGRESS_AFTER", 0.0)  # the demo model is quick: show every bar
    picker.set_value("Score-CAM").run()
    no_exception(at)
    assert at.session_state["forward_passes"] == passes + 1  # one view, not the recipe's six
    assert "(on one view: without the recipe's averaging of 6 views)" in boxes_caption(at)
    assert progress_texts[-1] == "Computing Score-CAM for shapes_000001.jpg: 65 of 65 network passes"
    at.sidebar.checkbox(key="all_views").check().run()
    no_exception(at)
    assert at.session_state["forward_passes"] == passes + 6 and "one view" not in boxes_caption(at)
    assert progress_texts[-1] == "Computing Score-CAM for shapes_000001.jpg: 325 of 325 network passes"


def test_tta_cam_only_where_it_differs_and_eigencam_says_it_is_class_agnostic(monkeypatch, tmp_path):
    """Issue 22, 10: under the six-view default TTA-CAM gave CAM's result exactly; EigenCAM was captioned as a map
    of one class."""
    at = page("explore.py", monkeypatch, tmp_path).run()
    at.sidebar.selectbox(key="recipe").set_value("multilevel-tta").run()
    assert not any(o.startswith("TTA-CAM") for o in at.sidebar.selectbox(key="method").options)
    at.sidebar.selectbox(key="recipe").set_value("multilevel-flip").run()
    assert any(o.startswith("TTA-CAM") for o in at.sidebar.selectbox(key="method").options)
    at.sidebar.selectbox(key="method").set_value("EigenCAM").run()
    no_exception(at)
    assert any(c.startswith("EigenCAM (class-agnostic: the same map for every class)") for c in image_captions(at))
    assert not any("EigenCAM of" in c for c in image_captions(at))


def test_the_dataset_browser_draws_as_explore_does(monkeypatch, tmp_path, pictures):
    """Issue 22, 7: at minimum score 0 the Dataset browser drew every box (369 tags over one photo), had no "most
    boxes drawn" cap, put the score before x and cut "class not in the ground truth" short."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (640, 480), (128, 128, 128)).save(tmp_path / "images" / "street.png")
    categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    truth = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [40, 60, 200, 150], "area": 1.0, "iscrowd": 0}]
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 7, "file_name": "street.png", "width": 640,
                                                               "height": 480}], "annotations": truth,
                                                   "categories": categories}))
    dets = [{"image_id": 7, "category_id": 1 + i % 2, "bbox": [20 + 12 * i, 30 + 9 * i, 180, 160],
             "score": 0.9 - 0.02 * i} for i in range(30)]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    at = page("dataset.py", monkeypatch).run()
    for key, value in (("ds_images", tmp_path / "images"), ("ds_ann", tmp_path / "ann.json"),
                       ("ds_dets", tmp_path / "dets.json")):
        at.sidebar.text_input(key=key).set_value(str(value)).run()
    at.sidebar.slider(key="ds_min_score").set_value(0.0).run()
    no_exception(at)
    assert image_captions(at)[1].startswith("5 of 30 boxes drawn (25 hidden: at most 5, none below 0.1 × the best "
                                            "score) of score ≥ 0.00")
    drawn = pictures(at)[1]
    assert sum(count_tags(drawn, c, 24) for c in distinct_colors(2)) == 5
    [table] = tables_with(at, "score")
    assert list(table.columns) == ["colour", "#", "class", "x", "y", "w", "h", "score", "IoU with GT", "best GT"]
    assert len(table) == 30 and table["score"].is_monotonic_decreasing
    cats = table[table["class"] == "cat"]
    assert (cats["best GT"] == "—").all() and cats["IoU with GT"].isna().all()
    assert "“—”: the ground truth has no box of its class." in texts(at.caption)
    at.sidebar.slider(key="most_boxes").set_value(2).run()  # Explore's setting, shared
    assert image_captions(at)[1].startswith("2 of 30 boxes drawn")


def test_pr_curves_keep_their_colours_and_coinciding_curves_stay_apart(monkeypatch, tmp_path):
    """Issue 22, 9: a class changed colour when the IoU changed (giraffe magenta → sky blue), and identical curves
    showed as one line with 1 px rims."""
    gt = EXAMPLE_ANNOTATIONS
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9 - 0.01 * i,
             "bbox": [a["bbox"][0] + (0.15 * a["bbox"][2] if a["category_id"] == 1 else 0), *a["bbox"][1:]]}
            for i, a in enumerate(gt["annotations"])]  # every class found exactly (one curve), but one
    metrics = localization_metrics(gt, dets)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    at = page("pr_curves.py", monkeypatch).run()
    at.text_input(key="eval_folder").set_value(str(tmp_path)).run()
    every = at.multiselect(key="pr_classes").options
    at.multiselect(key="pr_classes").set_value(every).run()
    no_exception(at)
    colours = {}
    for iou in ("0.50", "0.75", "0.50:0.95"):
        at.radio(key="iou").set_value(iou).run()
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        for trace in spec["data"]:
            colours.setdefault(trace["name"].split(" (AP=")[0], set()).add(trace["line"]["color"])
        groups: dict[tuple, list] = {}
        for trace in spec["data"]:
            groups.setdefault(tuple(trace["y"]), []).append(trace)
        for same in groups.values():  # curves on top of each other: each in its own dash style, and said so
            assert len({trace["line"]["dash"] for trace in same}) == len(same)
            if len(same) > 1:
                assert "share one curve" in texts(at.caption)
    assert all(len(c) == 1 for c in colours.values()) and len(set().union(*colours.values())) == len(every)
    assert any(len(same) > 1 for same in groups.values())  # the case was met


def test_first_visit_shows_the_demo_evaluation_and_training(monkeypatch, tmp_path):
    """Issue 22, 12: PR curves and Training runs were blank until the user ran `python -m eval` or trained."""
    at = page("app.py", monkeypatch, tmp_path / "no-runs").run()
    at.switch_page("app_pages/pr_curves.py").run()
    no_exception(at)
    assert "Showing the **demo**" in texts(at.info) and at.get("plotly_chart")
    assert len(at.dataframe[0].value) == 12
    at.switch_page("app_pages/training_runs.py").run()
    no_exception(at)
    assert "a training run of the bundled demo model's recipe" in texts(at.info)
    assert at.get("plotly_chart") and int(at.metric[0].value) == 8  # the demo's 8 epochs
    at.switch_page("app_pages/dataset.py").run()
    no_exception(at)
    assert tables_with(at, "score") and "demo" in at.sidebar.text_input(key="ds_dets").value


def test_a_coco_model_on_the_examples_says_why_no_photo_is_offered(monkeypatch, coco_checkpoints):
    """Issue 22, 12: with the COCO model selected, the examples were synthetic shapes without a word."""
    at = page("explore.py", monkeypatch, coco_checkpoints).run()
    assert "which this model does not know" not in texts(at.sidebar.caption)  # the demo model knows them
    at.sidebar.selectbox(key="model_label").set_value("coco.pt").run()
    no_exception(at)
    assert ("The examples are the demo model's synthetic shapes (blue square, cyan cross, green triangle, magenta "
            "ring, red disc, yellow star), which this model does not know; no photo is bundled") in texts(
        at.sidebar.caption)


#: What a person should never read in the app: module names, docstring markup, option keys, metrics-file keys.
INTERNALS = re.compile(r"camloc\.|:mod:|:class:|:func:|``|box_scale|num_gt|voc_AP50|GT1–GT1\b|\(s\)|\(es\)")


def visible_text(at: AppTest) -> str:
    """Every text of the page a person reads: texts, captions, labels, help, options, tables' columns, legends."""
    parts = []
    for kind in ("title", "header", "subheader", "caption", "markdown", "info", "warning", "error", "metric"):
        parts += [str(getattr(e, "value", "")) for e in at.get(kind)]
    parts += [c for e in at.get("image") for c in e.captions]
    for kind in ("selectbox", "radio", "multiselect", "slider", "checkbox", "text_input", "number_input", "button"):
        for widget in at.get(kind):
            parts += [widget.proto.label, widget.proto.help, *getattr(widget, "options", [])]
    parts += [str(c) for frame in at.dataframe for c in frame.value.columns]
    parts += [t.get("name", "") for chart in at.get("plotly_chart") for t in json.loads(chart.proto.spec)["data"]]
    return "\n".join(parts)


def test_no_module_names_or_internal_keys_in_the_app(monkeypatch, tmp_path, eval_folder):
    """Issue 22, 11: "camloc.recipes", "see camloc.boxes", "box_scale full", raw num_gt / voc_AP50 columns, "white boxes
    GT1–GT1" and "box(es)" were in the UI."""
    at = page("app.py", monkeypatch, tmp_path).run()
    seen = []
    for recipe in RECIPES:  # each recipe's description and settings, on Explore and Compare
        at.sidebar.selectbox(key="recipe").set_value(recipe).run()
        seen.append(visible_text(at))
    at.switch_page("app_pages/compare.py").run()
    seen.append(visible_text(at))
    for name in ("all_classes", "pr_curves", "training_runs", "dataset"):
        at.switch_page(f"app_pages/{name}.py").run()
        seen.append(visible_text(at))
    at.switch_page("app_pages/pr_curves.py").run()
    at.text_input(key="eval_folder").set_value(str(eval_folder)).run()
    seen.append(visible_text(at))
    no_exception(at)
    found = sorted({m.group(0) for text in seen for m in INTERNALS.finditer(text)})
    assert not found, found
    assert "traced at the image's resolution" in "".join(seen)  # a setting in words


@pytest.mark.parametrize("name", ["explore.py", "compare.py"])
def test_a_map_page_without_an_image_says_what_to_do(name, monkeypatch, tmp_path):
    """No upload and no bundled example (an install without them): one line saying what to do, on both map pages
    (Compare stopped silently before they shared their start, app_pages/subject.py)."""
    import app_pages.inputs

    monkeypatch.setattr(app_pages.inputs, "example_images", lambda: [])
    at = page(name, monkeypatch, tmp_path).run()
    no_exception(at)
    assert texts(at.info) == "Upload an image (or restore the bundled examples) to start."
    assert not at.main.get("imgs")
