"""``python -m eval`` images/s of two checkouts side by side in one run (the no-regression check of a change).

Each checkout runs its own ``python -m eval`` (a subprocess with that checkout first on the path) on the
112 coco-mini val2017 images at 448², batch 8, one loader worker and the default number of box workers,
for MobileNetV2 (the shared COCO-80 weights) and ResNet-50 (random backbone with the shared head's biases,
as ``bench/eval_speed.py`` builds it), with the course recipe and ``multilevel-flip`` (the same recipe in
both checkouts, so after / before is the change's own effect). Model loading and the final metrics are
excluded (the CLI's ``images_per_second``).

``PYTHONPATH=. python bench/eval_checkouts.py --before ../old-checkout [--rounds 1]``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.checkouts import parse_checkouts, side_by_side
from bench.eval_speed import SHARED, resnet50_checkpoint

RECIPES = ("seed", "multilevel-flip")


def eval_rate(checkout: Path, checkpoint: Path, recipe: str) -> float:
    """Images/s of ``checkout``'s ``python -m eval`` on the coco-mini val images."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "eval", "--images", str(SHARED / "coco-mini" / "val2017"),
                   "--ann", str(SHARED / "coco-mini" / "annotations" / "instances_val2017_mini.json"),
                   "--checkpoint", str(checkpoint), "--out", out, "--recipe", recipe, "--batch-size", "8",
                   "--workers", "1", "--device", "cpu"]
        subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, check=True,
                       capture_output=True)
        return json.loads((Path(out) / "metrics.json").read_text())["images_per_second"]


def main() -> None:
    args = parse_checkouts(__doc__.splitlines()[0], rounds=1)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"MobileNetV2": SHARED / "weights" / "mobilenet_v2_coco80_linear.pth",
                  "ResNet-50": resnet50_checkpoint(Path(tmp))}

        def measure(checkout: Path) -> dict[str, float]:
            return {f"{label}, {recipe}": eval_rate(checkout, checkpoint, recipe)
                    for label, checkpoint in models.items() for recipe in RECIPES}

        side_by_side(args, measure, "model, recipe", 2, " img/s")


if __name__ == "__main__":
    main()
