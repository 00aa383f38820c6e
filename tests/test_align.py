"""Maps laid where the network looks: the Localizer's ``align`` option, and flip consistency."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from camloc.boxes import boxes_from_raw_maps, make_recipe
from camloc.cam.frame import MapFrame
from camloc.evaluation import flip_consistency
from camloc.localize import Analysis, Localizer
from camloc.models.geometry import MapGeometry
from tests.conftest import COCO80, COCO_MINI
from tests.helpers import gradient_image, random_head_model

#: A geometry the tests make up: cells centred 10 px up and 7 px right of the analytic ResNet's.
MADE_UP = MapGeometry((32.0, 32.0), (-10.0, 7.0), "measured")


@pytest.fixture(scope="module")
def tiny():
    return random_head_model("resnet18")


@pytest.fixture
def made_up_geometry(monkeypatch):
    """Every model measures :data:`MADE_UP` (the Localizer's plumbing is tested here, the measuring elsewhere)."""
    monkeypatch.setattr("camloc.models.geometry.cache.measured_geometry", lambda model, size, layer=None: MADE_UP)
    monkeypatch.setattr("camloc.models.geometry.cache._MEASURED", OrderedDict())  # nothing measured before counts
    monkeypatch.setenv("CAMLOC_CACHE_DIR", "none")


def test_seed_keeps_the_stretched_grid_bit_for_bit(tiny, made_up_geometry):
    """``seed`` (the course recipe) lays its maps as it always did unless told: the same boxes as the stretched-grid
    tracing of the same maps; told ``align="measured"``, other boxes."""
    image = gradient_image(90, 130)
    default = Localizer(*tiny, img_size=64, recipe="seed")
    assert default.align == "none" and make_recipe("seed").default_align == "none"
    analysis = default.analyze(image)[0]
    assert analysis.frame is None
    found = boxes_from_raw_maps(analysis.raw_maps, analysis.size)  # the stretched grid, as before maps had frames
    score = found.heat * analysis.probs.double().numpy()[found.class_index]
    expected = sorted((int(k), tuple(float(v) for v in box), float(s))
                      for k, box, s in zip(found.class_index, found.xywh, score) if s > 0)
    ours = sorted((default.category_ids.index(d["category_id"]), tuple(d["bbox"]), d["score"])
                  for d in default.detections(analysis))
    assert ours == expected and len(ours) > 10
    assert default.predict(image) == Localizer(*tiny, img_size=64, recipe="seed", align="none").predict(image)
    aligned = Localizer(*tiny, img_size=64, recipe="seed", align="measured")
    assert aligned.predict(image) != default.predict(image)


def test_aligned_views_carry_their_frames(tiny, made_up_geometry):
    """Each view's maps come with where their cells sit: the plain view the geometry's frame, the mirrored view the
    mirrored frame, the six TTA views the first view's (the 0.75 view's, at 48 px)."""
    localizer = Localizer(*tiny, img_size=64, recipe="multilevel", align="measured")
    image = gradient_image(60, 80)
    plain = localizer.analyze(image, views=[(1.0, False)])[0]
    mirrored = localizer.analyze(image, views=[(1.0, True)])[0]
    assert plain.frame == MADE_UP.frame(64)
    assert mirrored.frame == MADE_UP.frame(64).mirrored(plain.raw_maps.shape[-1])
    assert torch.equal(plain.raw_maps, Localizer(*tiny, img_size=64, recipe="multilevel").analyze(
        image, views=[(1.0, False)])[0].raw_maps)  # alignment moves maps, never changes them
    six = Localizer(*tiny, img_size=64, tta=True, align="measured").analyze(image)[0]
    assert six.frame == MADE_UP.frame(48)
    joined = Analysis.average([localizer.analyze(image, views=[view])[0] for view in localizer.views("multilevel-tta")])
    torch.testing.assert_close(six.raw_maps, joined.raw_maps)
    heat = plain.heatmaps()
    assert heat.shape == (len(plain.classes), 60, 80) and float(heat.min()) >= 0 and float(heat.max()) == 1.0


def test_the_geometries_a_localizer_needs_are_listed_until_measured(tiny, made_up_geometry):
    """What the app measures (under a spinner) before its first aligned analysis: each view size's geometry once."""
    assert Localizer(*tiny, img_size=64, recipe="seed").unmeasured_geometries() == []  # align none: nothing
    localizer = Localizer(*tiny, img_size=64, recipe="multilevel-tta", align="measured")
    pending = localizer.unmeasured_geometries()
    assert [size for _, size in pending] == [48, 64, 80]
    assert localizer.unmeasured_geometries([(1.0, True)]) == [pending[1]]
    localizer.measure_geometries(pending[:1])
    assert localizer.unmeasured_geometries() == pending[1:]
    localizer.measure_geometries(pending[1:])
    assert localizer.unmeasured_geometries() == []
    assert localizer.analyze(gradient_image(40, 50))[0].frame == MADE_UP.frame(48)


def test_align_is_checked(tiny):
    with pytest.raises(ValueError, match="align must be one of none, measured"):
        Localizer(*tiny, img_size=64, align="centred")


def test_flip_consistency_measures_twice_the_misplacement():
    """A blob seen at 0.4 of the image and, mirrored, at 0.6: laid through the frames the cells really have, the two
    maps coincide (shift 0, correlation 1); stretched over the image, each is misplaced by 27.5 px of 448 the other
    way, and the mirrored map lies 2 × 27.5 / 32 = 1.72 cells to the left."""
    frame = MapFrame.of_network((0.0, -12.0), (32.0, 32.0), (448, 448))

    def blob_map(centre: float) -> torch.Tensor:
        column = torch.exp(-((frame.cell_positions(1, 14) - centre) / 0.08) ** 2)
        return column.float().expand(14, 14)[None].clone()

    plain, mirrored = blob_map(0.4), blob_map(0.6).flip(-1)
    laid = flip_consistency(plain, mirrored, frame, frame.mirrored(14))
    assert abs(laid.shift[0]) <= 1 / 16 and laid.correlation[0] > 0.98  # cells at other places: near, not equal
    stretched = flip_consistency(plain, mirrored)
    assert stretched.shift[0] == pytest.approx(-2 * 27.5 / 32, abs=1 / 16)
    assert stretched.correlation[0] < 0.5
    with pytest.raises(ValueError, match="must both be"):
        flip_consistency(plain, mirrored[..., :5])


@pytest.mark.realdata
@pytest.mark.slow
def test_aligned_maps_of_real_images_and_their_mirrors_coincide():
    """The shared COCO-80 MobileNetV2 (converted from TensorFlow's "SAME" padding): the map of the mirrored image,
    flipped back, lies a cell and a half to the side of the image's own when both are stretched over the image, and
    on it (within a quarter cell, median) when both are laid by the measured geometry."""
    listed = json.loads((COCO_MINI / "annotations" / "instances_val2017_mini_disjoint.json").read_text())["images"]
    images = sorted(listed, key=lambda im: im["id"])[:8]
    files = [COCO_MINI / "val2017" / im["file_name"] for im in images]
    shifts = {}
    for align in ("none", "measured"):
        localizer = Localizer.from_checkpoint(COCO80, recipe="multilevel", align=align, device="cpu")
        plain = localizer.analyze(files, views=[(1.0, False)])
        classes = [[int(a.probs.argmax())] for a in plain]
        plain = localizer.analyze(files, classes, views=[(1.0, False)])
        mirrored = localizer.analyze(files, classes, views=[(1.0, True)])
        shifts[align] = np.array([flip_consistency(a.raw_maps, b.raw_maps, a.frame, b.frame).shift[0]
                                  for a, b in zip(plain, mirrored)])
    assert np.median(np.abs(shifts["none"])) > 1.0
    assert np.median(np.abs(shifts["measured"])) <= 0.25


@pytest.mark.realdata
def test_eval_lays_maps_as_told_and_records_it(tmp_path, made_up_geometry):
    """``python -m eval --align measured`` draws other boxes than ``--align none`` from the same maps, and metrics.json
    records the alignment it ran with (without ``--align``: the recipe's, ``none`` for ``seed``)."""
    from eval.cli import main
    from tests.conftest import VAL_ANN, VAL_IMAGES

    def run(name: str, *extra: str) -> tuple[list, dict]:
        out = tmp_path / name
        assert main(["--images", str(VAL_IMAGES), "--ann", str(VAL_ANN), "--checkpoint", str(COCO80), "--out",
                     str(out), "--workers", "0", "--box-workers", "0", "--limit", "4", *extra]) == 0
        return json.loads((out / "detections.json").read_text()), json.loads((out / "metrics.json").read_text())

    aligned, aligned_metrics = run("aligned", "--recipe", "multilevel", "--align", "measured")
    plain, plain_metrics = run("plain", "--recipe", "multilevel", "--align", "none")
    assert aligned != plain
    assert aligned_metrics["settings"]["align"] == "measured" and plain_metrics["settings"]["align"] == "none"
    assert run("seed", "--recipe", "seed")[1]["settings"]["align"] == "none"
