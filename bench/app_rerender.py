"""The app's re-render times in headless Chromium, two checkouts side by side in one run.

Each round starts a fresh ``streamlit run app.py`` of each checkout in turn (the order alternates
between rounds) and walks the same steps a person takes: the shared COCO-80 MobileNetV2, a real
640×480 COCO photo with its ground truth, class, opacity, recipe, threshold and method changes on
Explore, then Compare under the default recipe: opened, and a new photo uploaded there. A step's time
runs from the key press or click to the end of the rerun it causes — Streamlit's ``script_finished``
message on the page's websocket — and every picture on the page loaded. Compare's two steps also
give their *first useful render*: the first state of the page whose heading names the photo and
whose CAM tile and recipe tiles show it (none greyed as the run before's), pictures loaded. Prints
the median over the rounds per step and checkout, and after / before.

    PYTHONPATH=. .venv/bin/python bench/app_rerender.py --before /tmp/app-before [--rounds 3]

``--before``: another checkout of camloc (e.g. ``git worktree add /tmp/app-before 223fd01``);
both run with this interpreter. Needs ``../shared/data`` and Debian's ``chromium``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from bench.checkouts import parse_checkouts, side_by_side
from camloc.boxes import DEFAULT_RECIPE, RECIPES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO80 = DATA / "weights" / "mobilenet_v2_coco80_linear.pth"
VAL = DATA / "coco-mini" / "val2017"
ANNOTATIONS = DATA / "coco-mini" / "annotations" / "instances_val2017_mini.json"
PHOTOS = (VAL / "000000104455.jpg", VAL / "000000005001.jpg")  # a zebra (its top class), a street
NEW_ON_COMPARE = VAL / "000000018575.jpg"  # a third 640×480 photo, uploaded on Compare
#: Compare's first useful render of photo ``name``: its heading names it, and CAM's tile and every recipe's tile
#: show its pictures (none greyed as the previous run's), all loaded.
USEFUL_COMPARE = """([name, tiles]) => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return false;
  const named = [...main.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .some(e => e.innerText.includes(`in ${name} (p = `));
  const live = [...main.querySelectorAll('[data-testid="stImage"]')].filter(e => !e.closest('[data-stale="true"]'));
  const shown = tiles.every(t => live.some(e => e.innerText.trim().startsWith(t + ':')));
  return named && shown && live.every(e => [...e.querySelectorAll('img')].every(i => i.complete && i.naturalWidth));
}"""
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(app: Path, checkpoints: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, CAMLOC_CHECKPOINTS=str(checkpoints), CAMLOC_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                               cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{app}: streamlit did not start")


class Timer:
    """Times one action: from the call to the next ``script_finished`` and every picture loaded."""

    def __init__(self, page: Page):
        self.page = page
        self.finished: list[float] = []
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload: bytes | str) -> None:
        if isinstance(payload, bytes):
            message = ForwardMsg()
            try:
                message.ParseFromString(payload)
            except Exception:  # not a ForwardMsg
                return
            if message.WhichOneof("type") == "script_finished":
                self.finished.append(time.perf_counter())

    def __call__(self, step: tuple[Callable[[], None], Callable[[], None]] | Callable[[], None],
                 done: str | None = None) -> float:
        """Seconds from a step's last key press or click (``(prepare, fire)``, or ``fire`` alone) to the end
        of its rerun (and ``done``, a selector, shown) with every picture loaded."""
        prepare, fire = step if isinstance(step, tuple) else (lambda: None, step)
        prepare()
        start = time.perf_counter()
        fire()
        return self.finish(start, done)

    def useful_then_finished(self, fire: Callable[[], None], useful: str, arg: object) -> tuple[float, float]:
        """Seconds from ``fire()`` to the first state in which the JavaScript predicate ``useful(arg)`` holds, and
        to the end of the rerun with every picture loaded."""
        start = time.perf_counter()
        fire()
        self.page.wait_for_function(useful, arg=arg, polling=20, timeout=900_000)
        first = time.perf_counter() - start
        return first, self.finish(start)

    def finish(self, start: float, done: str | None = None) -> float:
        """Seconds from ``start`` to the end of the rerun started after it (and ``done`` shown), pictures loaded."""
        while not any(t > start for t in self.finished):
            self.page.wait_for_timeout(5)
        if done:
            self.page.wait_for_selector(done, timeout=300_000)
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=300_000)
        self.page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=900_000)
        return time.perf_counter() - start

    def settle(self) -> None:
        self.page.wait_for_timeout(400)
        self.page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=300_000)


def choose(page: Page, label: str, option: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Open the select box ``label``, type ``option``; then click the option that reads ``option`` (or starts
    with it and a " · " of more words: the method picker gives each method's cost)."""
    wanted = page.locator('[role="option"]').filter(has_text=re.compile(rf"^{re.escape(option)}( · .*)?$"))

    def prepare() -> None:
        page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
        page.keyboard.type(option)
        wanted.first.wait_for()
    return prepare, lambda: wanted.first.click()


def radio(page: Page, label: str, option: str) -> Callable[[], None]:
    group = page.locator('[data-testid="stRadio"]').filter(has_text=label)
    return lambda: group.get_by_text(option, exact=True).click()


def pick(page: Page, label: str, option: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``option`` of the radio group ``label``, or of the select box ``label`` (the method: a radio group before
    issue 22, a select box after)."""
    if page.locator('[data-testid="stRadio"]').filter(has_text=label).count():
        return lambda: None, radio(page, label, option)
    return choose(page, label, option)


def slider_step(page: Page, label: str) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: page.locator(f'input[type="range"][aria-label="{label}"]').focus(),
            lambda: page.keyboard.press("ArrowRight"))


def show_upload(page: Page, timer: Timer, photo: Path) -> None:
    """Upload ``photo``; if the page still shows another image when its rerun ends, pick it."""
    count = len(timer.finished)
    page.locator('input[type="file"]').set_input_files(str(photo))
    while len(timer.finished) == count:
        page.wait_for_timeout(10)
    if not page.get_by_text(f"{photo.name} (640×480", exact=False).count():
        for act in choose(page, "Image", photo.name):
            act()


def explore_steps(page: Page, timer: Timer, times: dict[str, float]) -> None:
    """Explore's steps after the first photo, timed into ``times``; ends on CAM and the default recipe."""
    times["a 2nd photo (shown: picked, where the upload did not show it)"] = timer(
        lambda: show_upload(page, timer, PHOTOS[1]), f"text={PHOTOS[1].name} (640×480")
    timer(choose(page, "Image", PHOTOS[0].name), f"text={PHOTOS[0].name} (640×480")
    times["rerun, nothing changed (the R key)"] = timer((lambda: page.locator("h1").first.click(),
                                                        lambda: page.keyboard.press("r")))
    times["class"] = timer(choose(page, "Class", "person"))
    times["opacity (no network, no boxes)"] = timer(slider_step(page, "Overlay opacity"))
    times["recipe (default → seed)"] = timer(choose(page, "Box recipe", "seed"))
    times["threshold (Otsu → 0.3 of the max)"] = timer(radio(page, "Threshold", "Fraction of max"))
    times["switch to TTA-CAM, first time for this photo"] = timer(pick(page, "Method", "TTA-CAM"))
    times["class under TTA-CAM"] = timer(choose(page, "Class", "zebra"))
    times["threshold under TTA-CAM"] = timer(radio(page, "Threshold", "Otsu"))
    times["back to CAM"] = timer(pick(page, "Method", "CAM"))
    times["TTA-CAM again"] = timer(pick(page, "Method", "TTA-CAM"))
    timer(pick(page, "Method", "CAM"))
    timer(choose(page, "Box recipe", DEFAULT_RECIPE))


def walk(page: Page, url: str, compare_only: bool = False) -> dict[str, float]:
    """The steps, timed; returns seconds per step (``compare_only``: from the first photo straight to
    Compare's two renders, opened and a new photo there)."""
    timer = Timer(page)
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stImage"]', timeout=300_000)
    timer.settle()
    times: dict[str, float] = {}
    timer(choose(page, "Model", COCO80.name))
    page.locator('[data-testid="stExpander"]').filter(has_text="Ground truth").locator("summary").click()
    field = page.locator('input[aria-label="Ground truth (COCO instances JSON)"]')
    field.fill(str(ANNOTATIONS))
    timer(lambda: field.press("Enter"))
    uploader = page.locator('input[type="file"]')
    times["a new photo (upload, decode, the network's passes)"] = timer(
        lambda: uploader.set_input_files(str(PHOTOS[0])), f"text={PHOTOS[0].name} (640×480")
    if not compare_only:
        explore_steps(page, timer, times)
    compare = page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Compare").first
    tiles = ["CAM", *RECIPES]
    times["open Compare, default recipe: first useful render"], times["open Compare: page done"] = \
        timer.useful_then_finished(compare.click, USEFUL_COMPARE, [PHOTOS[0].name, tiles])
    uploader = page.locator('input[type="file"]')
    times["Compare, a new photo: first useful render"], times["Compare, a new photo: page done"] = \
        timer.useful_then_finished(lambda: uploader.set_input_files(str(NEW_ON_COMPARE)), USEFUL_COMPARE,
                                   [NEW_ON_COMPARE.name, tiles])
    if compare_only:
        return times
    times["class on Compare"] = timer(choose(page, "Class", "person"))
    times["“Maps from” on Compare"] = timer(radio(page, "Maps from", "Grad-CAM"))
    times["opacity on Compare"] = timer(slider_step(page, "Overlay opacity"))
    return times


def main() -> None:
    args = parse_checkouts(__doc__.split("\n\n")[0], rounds=3, add_options=lambda parser: parser.add_argument(
        "--compare-only", action="store_true", help="only Compare's renders: opened, and a new photo uploaded there"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not COCO80.is_file():
        sys.exit("error: needs Debian's chromium and ../shared/data (the COCO-80 weights, coco-mini)")
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        checkpoints = Path(folder)
        for suffix in (".pth", ".json"):
            shutil.copy(COCO80.with_suffix(suffix), checkpoints / COCO80.with_suffix(suffix).name)
        browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)

        def measure(app: Path) -> dict[str, float]:
            process, url = start_server(app, checkpoints)
            try:
                tab = browser.new_page(viewport={"width": 1500, "height": 1000})
                times = walk(tab, url, args.compare_only)
                tab.close()
                return times
            finally:
                process.terminate()
                process.wait(30)

        side_by_side(args, measure, "change (Explore unless said)", digits=2)
        browser.close()


if __name__ == "__main__":
    main()
