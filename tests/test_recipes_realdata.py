"""Box recipes on real COCO images with the shared COCO-80 weights (coco-mini val2017 ∖ train2017)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from camloc.boxes import DEFAULT_RECIPE
from camloc.cam import normalize_maps
from camloc.evaluation import coco_evaluate
from camloc.localize import Analysis, Localizer
from tests.conftest import COCO80, VAL_IMAGES, WEIGHTS
from tests.test_boxes import reference_boxes

pytestmark = pytest.mark.realdata
DISJOINT_ANN = VAL_IMAGES.parent / "annotations" / "instances_val2017_mini_disjoint.json"


@pytest.fixture(scope="module")
def analysed():
    """The default recipe's views of the 92 disjoint val images, one forward pass per view, shared by all recipes:
    the plain view laid as the course recipe lays it (the grid stretched over the image: alignment moves maps,
    never changes them) and the default's aligned average of its views."""
    assert WEIGHTS.is_dir()
    localizer = Localizer.from_checkpoint(COCO80, device="cpu")
    gt = json.loads(DISJOINT_ANN.read_text())
    images = sorted(gt["images"], key=lambda im: im["id"])
    views = localizer.views(DEFAULT_RECIPE)
    per_view: dict[tuple[float, bool], list] = {view: [] for view in views}
    for start in range(0, len(images), 8):
        paths = [VAL_IMAGES / im["file_name"] for im in images[start:start + 8]]
        for view in views:
            per_view[view] += localizer.analyze(paths, views=[view])
    default = [Analysis.average(group) for group in zip(*(per_view[view] for view in views))]
    assert localizer.align == "measured"
    plain = [replace(analysis, frame=None) for analysis in per_view[(1.0, False)]]
    return localizer, gt, images, plain, default


def test_seed_is_the_course_recipe_on_real_images(analysed):
    shared, _, images, plain, _ = analysed
    localizer = Localizer(shared.model, shared.meta, device="cpu", max_dets=0)  # every box of every class
    for image, analysis in list(zip(images, plain))[:6]:
        dets = localizer.detections(analysis, image["id"], recipe="seed")
        heat = normalize_maps(analysis.raw_maps, analysis.size).numpy()
        expected = []
        for k in range(80):
            for x, y, w, h in reference_boxes(heat[k]):
                score = heat[k, y:y + h, x:x + w].mean(dtype=np.float64) * float(analysis.probs[k])
                expected.append((localizer.category_ids[k], [float(x), float(y), float(w), float(h)], score))
        assert sorted((d["category_id"], d["bbox"], d["score"]) for d in dets) == sorted(expected)  # bit-equal


def test_the_default_recipe_beats_the_course_recipe_and_the_full_image_box(analysed):
    localizer, gt, images, plain, default_maps = analysed
    def stats(dets):
        s = coco_evaluate(gt, dets)["stats"]
        return s[0], s[1]
    seed = stats([d for im, a in zip(images, plain) for d in localizer.detections(a, im["id"], recipe="seed")])
    full = stats([d for im, a in zip(images, plain) for d in localizer.baseline_detections(a, "full", im["id"])])
    default = stats([d for im, a in zip(images, default_maps)
                     for d in localizer.detections(a, im["id"], recipe=DEFAULT_RECIPE)])
    print(f"\n92 real images: AP / AP50 — seed {seed[0]:.4f} / {seed[1]:.4f}, full image {full[0]:.4f} / {full[1]:.4f},"
          f" {DEFAULT_RECIPE} {default[0]:.4f} / {default[1]:.4f} ({default[0] / seed[0]:.2f}× / "
          f"{default[1] / seed[1]:.2f}× seed)")
    assert default[0] > 1.3 * seed[0] and default[1] > 1.3 * seed[1]
    assert default[0] > full[0] and default[1] > full[1]
