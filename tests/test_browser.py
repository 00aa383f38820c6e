"""End to end in a real headless Chromium: `streamlit run app.py`, upload a real COCO image, change the
class and the threshold, and check that the rendered boxes change. Screenshots go to the test's
folder (and to $CAMLOC_SCREENSHOT_DIR when set, for the README)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from camloc.evaluation import localization_metrics
from camloc.localize import Localizer
from tests.conftest import COCO80, ROOT, VAL_ANN, VAL_IMAGES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    for suffix in (".pth", ".json"):
        shutil.copy(COCO80.with_suffix(suffix), checkpoints / COCO80.with_suffix(suffix).name)
    port = free_port()
    env = dict(os.environ, CAMLOC_CHECKPOINTS=str(checkpoints))
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    yield url
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


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
    images = page.locator('[data-testid="stImage"] img')
    images.nth(2).wait_for()
    return images.nth(2).get_attribute("src")


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    target = os.environ.get("CAMLOC_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def test_upload_change_class_and_threshold_changes_boxes(page, server, tmp_path):
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stImage"]')
    settle(page)
    choose(page, "Model", COCO80.name)
    page.locator('input[type="file"]').set_input_files(str(VAL_IMAGES / "000000005001.jpg"))
    page.wait_for_selector("text=000000005001.jpg")
    settle(page)
    first = boxes_image_src(page)
    shoot(page, tmp_path, "explore")
    choose(page, "Class", "toothbrush")
    second = boxes_image_src(page)
    assert second != first
    page.locator('[data-testid="stRadio"]').filter(has_text="Threshold").get_by_text("Fraction of max").click()
    settle(page)
    shoot(page, tmp_path, "fraction_mode")
    third = boxes_image_src(page)
    assert third != second  # Otsu → 0.3 of the max
    page.locator('input[type="range"][aria-label="Fraction"]').focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    settle(page)
    page.wait_for_selector("text=threshold 0.05")
    assert boxes_image_src(page) != third  # 0.3 → 0.05 of the max: the box grows
    assert page.locator('[data-testid="stException"]').count() == 0
    assert (tmp_path / "explore.png").stat().st_size > 10_000


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
    for path, name in [("all_classes", "all_classes"), ("pr_curves", "pr_curves"), ("dataset", "dataset")]:
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        page.wait_for_selector("h1")
        settle(page)
        if name == "pr_curves":
            field = page.locator('input[aria-label="Evaluation folder (the --out of python -m eval)"]')
            field.fill(str(tmp_path / "eval"))
            field.press("Enter")
            settle(page)
            page.wait_for_selector(".js-plotly-plot")
        assert page.locator('[data-testid="stException"]').count() == 0
        shoot(page, tmp_path, name)
