"""Seconds of page script per rerun (no browser), two checkouts side by side in one run.

Runs Explore and Compare under ``streamlit.testing.v1.AppTest`` with the shared COCO-80 MobileNetV2
and a real 640×480 COCO photo: the upload (the network's passes, Compare's for every method), then
reruns that need no network pass: a rerun with nothing changed, a class change and an opacity change —
the part of a re-render that is Python on the server (the browser's share is in
``bench/app_rerender.py``). Each checkout runs in its own process (both have an ``app_pages``
package — ``pages`` before it was renamed), the order alternating between rounds; median over the rounds.

    PYTHONPATH=. .venv/bin/python bench/app_script_time.py --before /tmp/app-before [--rounds 5]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.checkouts import parse_checkouts, side_by_side

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO80 = DATA / "weights" / "mobilenet_v2_coco80_linear.pth"
PHOTO = DATA / "coco-mini" / "val2017" / "000000104455.jpg"

#: Run inside the checkout (``python -c``): prints one JSON object, seconds per step.
TIMED = r"""
import json, os, sys, time
from pathlib import Path
from streamlit.testing.v1 import AppTest

photo, model = Path(sys.argv[1]), sys.argv[2]
times = {}
folder = "app_pages" if Path("app_pages").is_dir() else "pages"
for name in ("explore", "compare"):
    at = AppTest.from_file(f"{folder}/{name}.py", default_timeout=600).run()
    at.sidebar.selectbox(key="model_label").set_value(model).run()
    start = time.perf_counter()
    at.sidebar.file_uploader(key="uploads").set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    times[f"{name}: a new photo (the network's passes)"] = time.perf_counter() - start
    at.selectbox(key="class_name").set_value("person").run()
    at.selectbox(key="class_name").set_value("zebra").run()  # both classes' boxes computed once
    at.sidebar.slider(key="alpha").set_value(0.55).run()
    at.sidebar.slider(key="alpha").set_value(0.5).run()
    for step, action in (("rerun, nothing changed", at.run),
                         ("class (its boxes computed before)", lambda: at.selectbox(key="class_name")
                          .set_value("person").run()),
                         ("opacity (pictures made before)", lambda: at.sidebar.slider(key="alpha")
                          .set_value(0.55).run()),
                         ("opacity, a new value", lambda: at.sidebar.slider(key="alpha").set_value(0.6).run())):
        start = time.perf_counter()
        action()
        times[f"{name}: {step}"] = time.perf_counter() - start
        assert not at.exception, [e.value for e in at.exception]
print(json.dumps(times))
"""


def timed(checkout: Path, checkpoints: Path) -> dict[str, float]:
    env = dict(os.environ, CAMLOC_CHECKPOINTS=str(checkpoints), CAMLOC_OFFLINE="1", PYTHONPATH=str(checkout),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    out = subprocess.run([sys.executable, "-c", TIMED, str(PHOTO), COCO80.name], cwd=checkout, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_checkouts(__doc__.split("\n\n")[0], rounds=5)
    if not COCO80.is_file():
        sys.exit("error: needs ../shared/data (the COCO-80 weights, coco-mini)")
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".pth", ".json"):
            shutil.copy(COCO80.with_suffix(suffix), Path(folder) / COCO80.with_suffix(suffix).name)
        side_by_side(args, lambda app: timed(app, Path(folder)), "page: change", digits=3)


if __name__ == "__main__":
    main()
