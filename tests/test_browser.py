"""End to end in a real headless Chromium: `streamlit run app.py`, upload a real COCO photo with its
ground truth, change the class and the threshold and check that the rendered boxes change, then walk
through the other pages by the sidebar (the model and the upload follow) and open every page.
Screenshots go to the test's folder (and to $CAMLOC_SCREENSHOT_DIR when set, for the README)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_pages.methods import offered
from camloc.boxes import DEFAULT_RECIPE, RECIPES
from camloc.evaluation import localization_metrics
from camloc.localize import Localizer
from camloc.models.pretrained import OFFLINE_ENV
from camloc.synthetic import generate
from camloc.viz import format_score
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES, user_environment
from tests.helpers import gradient_image
from train.cli import main as train_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]
ZEBRA = VAL_IMAGES / "000000104455.jpg"  # 640×480, the model's top class: zebra
STREET = VAL_IMAGES / "000000005001.jpg"  # 640×480, another photo
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


#: Watches the main area from now on: counts the states in which a caption names the photo ``name`` while a
#: picture of the run before (greyed, ``data-stale``) is still shown.
WATCH_STALE = """name => {
  window.__named = false; window.__staleWhileNamed = 0; window.__staleSeen = [];
  const main = document.querySelector('[data-testid="stMain"]');
  const check = () => {
    const captions = [...main.querySelectorAll('[data-testid="stCaptionContainer"]')].map(e => e.innerText);
    if (!captions.some(text => text.includes(name))) return;
    window.__named = true;
    const stale = main.querySelector('[data-stale="true"] img');
    if (!stale) return;
    window.__staleWhileNamed += 1;  // what was stale, and what named the new photo meanwhile: for the failure message
    window.__staleSeen.push([stale.closest('[data-stale="true"]').getAttribute('data-testid'), stale.alt,
                             captions.filter(text => text.includes(name)).join(' / ').slice(0, 160)]);
  };
  new MutationObserver(check).observe(main, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_training_run(out: Path, data: Path) -> None:
    """A real `python -m train` run (synthetic shapes, 64 px, 3 epochs, validated) for the Training runs page."""
    generate(data, 48, 16, 3, 64, 0)
    assert train_main(["--images", str(data / "train"), "--ann", str(data / "annotations/instances_train.json"),
                       "--val-images", str(data / "val"), "--val-ann", str(data / "annotations/instances_val.json"),
                       "--arch", "mobilenet_v2", "--weights", "none", "--epochs", "3", "--img-size", "64",
                       "--batch-size", "16", "--lr", "1e-2", "--workers", "0", "--device", "cpu", "--val-limit", "8",
                       "--out", str(out)]) == 0


@contextlib.contextmanager
def streamlit_app(env: dict[str, str]) -> Iterator[str]:
    """`streamlit run app.py` on a free port, until the block ends; yields its address once it is healthy."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not become healthy: {process.stdout.read().decode()[-2000:]}")
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, coco80_geometry):
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), checkpoints / COCO80.with_suffix(suffix).name)
    tiny_training_run(checkpoints / "shapes-tiny", tmp_path_factory.mktemp("shapes"))
    with streamlit_app(user_environment(CAMLOC_CHECKPOINTS=str(checkpoints), **{OFFLINE_ENV: "1"})) as url:
        yield url


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.set_default_timeout(120_000)
        yield tab
        browser.close()


def settle(page) -> None:
    """Wait until Streamlit has finished rerunning the script."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)
    page.wait_for_timeout(300)


def choose(page, label: str, option: str) -> None:
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")
    settle(page)


def boxes_image_src(page) -> str:
    """The address of Explore's boxes picture (the one captioned with the recipe)."""
    picture = page.locator('[data-testid="stImage"]').filter(has_text=", recipe ").locator("img").first
    picture.wait_for()
    return picture.get_attribute("src")


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    target = os.environ.get("CAMLOC_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def go_to(page, title: str) -> None:
    """Open another page by the sidebar's navigation (same session: what was chosen stays chosen)."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    settle(page)
    page.wait_for_selector(f'h1:has-text("{title.split()[0]}")')


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def test_upload_change_class_and_threshold_changes_boxes(page, server, tmp_path):
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stImage"]')
    settle(page)
    choose(page, "Model", COCO80.name)
    page.locator('[data-testid="stExpander"]').filter(has_text="Ground truth").locator("summary").click()
    field = page.locator('input[aria-label="Ground truth (COCO instances JSON)"]')
    field.fill(str(VAL_ANN))
    field.press("Enter")
    settle(page)
    page.locator('input[type="file"]').set_input_files(str(ZEBRA))
    page.wait_for_selector(f"text={ZEBRA.name}")
    settle(page)
    page.wait_for_selector("text=2 “zebra” objects in the ground truth")  # the photo's own top class and its truth
    shoot(page, tmp_path, "explore")
    default_recipe = boxes_image_src(page)
    choose(page, "Box recipe", "seed")  # the course recipe: Otsu or a fraction of the max
    first = boxes_image_src(page)
    assert first != default_recipe
    page.locator('[data-testid="stRadio"]').filter(has_text="Threshold").get_by_text("Fraction of max").click()
    settle(page)
    second = boxes_image_src(page)
    assert second != first  # Otsu → 0.3 of the max
    for _ in range(5):  # 0.3 → 0.05; a rerun re-renders the slider and may take its focus, so one step at a time
        page.locator('input[type="range"][aria-label="Fraction"]').focus()
        page.keyboard.press("ArrowLeft")
        settle(page)
    page.wait_for_selector("text=threshold 0.05")
    third = boxes_image_src(page)
    assert third != second  # 0.3 → 0.05 of the max: the box grows
    choose(page, "Class", "toothbrush")
    assert boxes_image_src(page) != third
    no_exception(page)
    assert (tmp_path / "explore.png").stat().st_size > 10_000

    # the other image pages, by the sidebar: same model, same photo, same class, the default recipe (issue 22:
    # Compare now computes what is cheap first and Score-CAM when asked: seconds, not minutes, on this CPU)
    choose(page, "Class", "zebra")
    choose(page, "Box recipe", DEFAULT_RECIPE)
    go_to(page, "All classes")
    page.wait_for_selector(f"text=Your upload: {ZEBRA.name}")
    page.wait_for_selector('text=zebra')
    no_exception(page)
    page.locator('[data-testid="stDataFrame"]').last.wait_for()  # the overlay's legend: its colours, 3 digits
    page.get_by_text("Multi-class overlay").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    settle(page)
    shoot(page, tmp_path, "all_classes")
    go_to(page, "Compare")
    page.wait_for_selector("text=“zebra” in 000000104455.jpg")
    cheap = [m for m in offered(DEFAULT_RECIPE) if not m.opt_in]  # Score-CAM: when its button asks
    pictures = len(cheap) + 1 + len(RECIPES)  # the methods, their colour bar, the recipes
    page.wait_for_selector(f'[data-testid="stImage"] >> nth={pictures - 1}')
    settle(page)
    assert page.locator('[data-testid="stImage"]').count() == pictures
    assert page.get_by_role("button", name="Compute Score-CAM").count() == 1
    no_exception(page)
    shoot(page, tmp_path, "compare")

    # issue 22, 4: a photo uploaded on Compare left the previous photo's pictures on screen (greyed) for the whole
    # computation while the page already named the new one. Every state of the page is watched from the upload on.
    page.evaluate(WATCH_STALE, STREET.name)
    page.locator('input[type="file"]').set_input_files(str(STREET))
    page.wait_for_selector(f"text=in {STREET.name} (p = ", timeout=300_000)
    settle(page)
    seen, stale_while_named, what = page.evaluate("[window.__named, window.__staleWhileNamed, window.__staleSeen]")
    assert seen and stale_while_named == 0, (f"{stale_while_named} page states showed a stale picture under the new "
                                             f"name (element, alt text, naming caption): {what[:3]}")
    no_exception(page)
    go_to(page, "Explore")
    page.wait_for_selector(f"text={STREET.name} (640×480)")  # the upload made on Compare, shown on every page
    no_exception(page)

    # issue 17: an animated GIF is taken by the uploader (it showed a red "!") and shown at once (first frame)
    frames = [Image.fromarray(gradient_image(240, 320, seed=i)) for i in range(3)]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    page.locator('input[type="file"]').set_input_files(str(gif))
    page.wait_for_selector("text=clip.gif (320×240, the first of its 3 frames)")
    settle(page)
    assert page.locator('[data-testid="stFileChipIconError"]').count() == 0
    no_exception(page)


def test_a_bookmarked_page_is_the_app_even_as_a_fresh_servers_first_visit(tmp_path):
    """A fresh server whose first visitor opened /compare (a bookmark) ran the page's module on its own: Streamlit
    took the modules beside app.py in a folder named ``pages/`` for a legacy multipage app until some session ran
    app.py — the sidebar listed 23 modules (analysis, geometry, inputs, …) and the page had not app.py's layout."""
    from playwright.sync_api import sync_playwright

    titles = ["Explore", "All classes", "Compare", "PR curves", "Training runs", "Dataset browser"]
    with streamlit_app(user_environment(CAMLOC_CHECKPOINTS=str(tmp_path), **{OFFLINE_ENV: "1"})) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.set_default_timeout(120_000)
        tab.goto(f"{url}/pr_curves", wait_until="domcontentloaded")
        tab.wait_for_selector('h1:has-text("Precision-recall curves")')
        settle(tab)
        links = tab.locator('[data-testid="stSidebarNav"] a')
        assert [links.nth(i).inner_text().splitlines()[-1] for i in range(links.count())] == titles
        assert tab.locator('[data-testid="stMain"]').bounding_box()["width"] > 1000  # app.py's wide layout
        no_exception(tab)
        browser.close()


def test_numbers_read_the_same_in_tables_and_pictures(page, server):
    """Tables write scores with ``%.3g`` in the browser (JavaScript's toPrecision); pictures and captions
    with camloc.viz.format_score: the same text for the same number, checked in Chromium itself."""
    page.goto(server, wait_until="domcontentloaded")
    rng = np.random.default_rng(0)
    values = [float(v) for v in 10 ** rng.uniform(-9, 1, 2000)] + [0.000317, 0.5625, 0.57, 1.0, 1e-7, 9.995e-7]
    written = page.evaluate("xs => xs.map(x => String(Number(x.toPrecision(3))))", values)
    assert written == [format_score(v) for v in values]


def test_every_page_renders_without_exceptions(page, server, tmp_path):
    # an evaluation folder for the PR page: real detections of the shared model on 24 val images
    gt = json.loads(VAL_ANN.read_text())
    images = sorted(gt["images"], key=lambda im: im["id"])[:24]
    localizer = Localizer.from_checkpoint(COCO80)
    dets = [d for batch in localizer.predict_batch([VAL_IMAGES / im["file_name"] for im in images],
                                                   [im["id"] for im in images]) for d in batch]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(
        json.dumps(localization_metrics(gt, dets, [im["id"] for im in images])))
    (tmp_path / "eval" / "detections.json").write_text(json.dumps(dets))
    for path, name in [("pr_curves", "pr_curves"), ("training_runs", "training_runs"), ("dataset", "dataset")]:
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        page.wait_for_selector("h1")
        settle(page)
        if name == "pr_curves":
            field = page.locator('input[aria-label="Evaluation folder (the --out of python -m eval)"]')
            field.fill(str(tmp_path / "eval"))
            field.press("Enter")
            settle(page)
            page.wait_for_selector(".js-plotly-plot")
            stats = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
            assert stats["height"] >= 13 * 33  # header + all 12 COCO stats, no inner scroll
        if name == "dataset":  # real photos, their ground truth and the model's detections
            for label, value in [("Images folder", VAL_IMAGES), ("Annotations (COCO instances JSON)", VAL_ANN),
                                 ("Detections (COCO results JSON, optional)", tmp_path / "eval" / "detections.json")]:
                field = page.locator(f'input[aria-label="{label}"]')
                field.fill(str(value))
                field.press("Enter")
                settle(page)
            page.wait_for_selector('[data-testid="stDataFrame"]')
        if name == "training_runs":
            page.wait_for_selector(".js-plotly-plot")
            page.wait_for_selector("text=best epoch")
        no_exception(page)
        shoot(page, tmp_path, name)


def script_runs(page) -> list[float]:
    """The times of Streamlit's ``script_finished`` messages on the page's websocket, from now on."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    finished = []

    def frame(payload) -> None:
        message = ForwardMsg()
        if isinstance(payload, bytes):
            try:
                message.ParseFromString(payload)
            except Exception:  # not a ForwardMsg
                return
            if message.WhichOneof("type") == "script_finished":
                finished.append(time.time())

    page.on("websocket", lambda ws: ws.on("framereceived", frame))
    return finished


def test_the_pages_fit_1280_by_800(page, server):
    """Issue 22, 13: at 1280×800 the pictures started at the bottom edge, the class picker sat under ten method
    radio buttons, and a 320 px image's boxes picture was wider than its neighbours."""
    page.set_viewport_size({"width": 1280, "height": 800})
    runs = script_runs(page)
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stMain"] [data-testid="stImage"] img')
    settle(page)
    pictures = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    boxes = [pictures.nth(i).bounding_box() for i in range(pictures.count())]
    original, heat, boxed = boxes[0], boxes[1], boxes[-1]  # the bundled 320×320 example; the colour bar between
    assert max(original["y"], heat["y"], boxed["y"]) < 800 / 2  # the pictures in the upper half of the screen
    assert abs(original["width"] - boxed["width"]) <= 2 and abs(heat["width"] - boxed["width"]) <= 2
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Class").first.bounding_box()
    method = page.locator('[data-testid="stSelectbox"]').filter(has_text="Method").first.bounding_box()
    assert picker["y"] + picker["height"] < min(800, original["y"]) and picker["y"] < method["y"]
    resolution = page.locator('[data-testid="stRadio"]').filter(has_text="Box resolution")
    for option in ("1× grid", "4× grid"):  # a click on Box resolution: one rerun of the page
        before = len(runs)
        resolution.get_by_text(option, exact=True).click()
        settle(page)
        page.wait_for_timeout(1000)
        assert len(runs) - before == 1
    go_to(page, "Compare")
    page.wait_for_selector('[data-testid="stMain"] [data-testid="stImage"] >> nth=5')
    settle(page)
    tiles = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    boxes = [tiles.nth(i).bounding_box() for i in range(tiles.count())]
    first_row = [b for b in boxes if abs(b["y"] - boxes[0]["y"]) < 2]
    assert boxes[0]["y"] < 800 and len(first_row) == 4 and min(b["width"] for b in first_row) > 150
    no_exception(page)
