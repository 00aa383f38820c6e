import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from camloc.boxes import DEFAULT_RECIPE, boxes_from_raw_maps, parse_class_selection
from camloc.boxes.contours import heatmaps_to_boxes
from camloc.cam import normalize_maps
from camloc.localize import Analysis, Localizer
from camloc.models.classes import COCO_CATEGORY_IDS
from tests.fuzz_support import assert_one_line, fuzz
from tests.helpers import gradient_image, image_bytes, random_head_model


@pytest.fixture(scope="module")
def tiny():
    return random_head_model("resnet18")


@pytest.mark.parametrize("recipe", ["seed", DEFAULT_RECIPE])
def test_every_selected_class_yields_boxes_in_original_pixels(tiny, recipe):
    localizer = Localizer(*tiny, img_size=64, recipe=recipe, max_dets=0)  # every detection
    image = gradient_image(90, 130)
    dets = localizer.predict(image, image_id=7)
    probs = localizer.analyze(image)[0].probs
    selected = {COCO_CATEGORY_IDS[k] for k in torch.nonzero(localizer.select(probs[None])[0]).flatten().tolist()}
    assert {d["category_id"] for d in dets} == selected
    assert selected == set(COCO_CATEGORY_IDS) if recipe == "seed" else len(selected) >= 1
    for det in dets:
        x, y, w, h = det["bbox"]
        assert det["image_id"] == 7 and x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= 130 and y + h <= 90 and 0.0 <= det["score"] <= 1.0


def test_the_tta_recipe_averages_six_views_and_the_default_flip_recipe_the_mirrored_one(tiny):
    localizer = Localizer(*tiny, img_size=64, recipe="multilevel-tta")
    assert localizer.views() == Localizer(*tiny, tta=True).views() and len(localizer.views()) == 6
    image = gradient_image(50, 70)
    six = localizer.analyze(image)[0]
    alone = [localizer.analyze(image, views=[view])[0] for view in localizer.views()]
    torch.testing.assert_close(six.raw_maps, Analysis.average(alone).raw_maps)
    with pytest.raises(ValueError, match="six views"):
        localizer.detections(alone[0])
    assert localizer.detections(six)
    localizer = Localizer(*tiny, img_size=64)
    assert localizer.recipe.name == DEFAULT_RECIPE == "multilevel-flip" and localizer.align == "measured"
    assert localizer.views() == [(1.0, False), (1.0, True)]
    localizer = Localizer(*tiny, img_size=64, align="none")  # the views averaged as they are (aligned: test_align)
    image = gradient_image(50, 70)
    both = localizer.analyze(image)[0]
    one, mirrored = (localizer.analyze(image, views=[view])[0] for view in localizer.views())
    torch.testing.assert_close(both.raw_maps, (one.raw_maps + mirrored.raw_maps) / 2)
    assert both.mirrored and not one.mirrored
    with pytest.raises(ValueError, match="mirrored"):
        localizer.detections(one)
    assert localizer.detections(one, recipe="seed")  # a one-view recipe works on the one view
    assert localizer.views("seed") == [(1.0, False)]


def test_seed_score_is_mean_heat_times_probability(tiny):
    localizer = Localizer(*tiny, img_size=64, recipe="seed")
    analysis = localizer.analyze(gradient_image(50, 70))[0]
    dets = localizer.detections(analysis, classes=[3])
    heat = analysis.heatmaps([3])[0].numpy()
    with torch.no_grad():
        prob = torch.sigmoid(tiny[0](localizer.to_tensor([Image.fromarray(gradient_image(50, 70))]))[0])
    for det in dets:
        x, y, w, h = map(int, det["bbox"])
        expected = heat[y:y + h, x:x + w].mean(dtype=np.float64) * prob[0, 3].item()
        assert det["score"] == pytest.approx(expected, rel=1e-5)


def test_batch_equals_one_by_one_and_images_never_collide(tiny):
    localizer = Localizer(*tiny, img_size=64, recipe="seed")
    first, second = gradient_image(60, 80, seed=1), gradient_image(60, 80, seed=2)[::-1].copy()
    batch = localizer.analyze([first, second])
    assert not torch.allclose(batch[0].raw_maps, batch[1].raw_maps)
    for image, expected in [(first, batch[0]), (second, batch[1])]:
        single = localizer.analyze(image)[0]
        torch.testing.assert_close(single.raw_maps, expected.raw_maps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(single.probs, expected.probs, atol=1e-5, rtol=1e-5)
    dets = localizer.predict_batch([first, second], image_ids=[1, 2])
    assert {d["image_id"] for d in dets[0]} == {1} and {d["image_id"] for d in dets[1]} == {2}
    assert [d["bbox"] for d in dets[0]] != [d["bbox"] for d in dets[1]]


def test_class_selection(tiny):
    image = image_bytes(gradient_image(40, 40))
    top3 = Localizer(*tiny, img_size=64, classes="topk:3").predict(image)
    assert len({d["category_id"] for d in top3}) == 3
    probs = Localizer(*tiny, img_size=64).analyze(image)[0].probs
    ranked = probs.sort(descending=True).values
    floor = float(ranked[4] + ranked[5]) / 2
    above = Localizer(*tiny, img_size=64, classes=f"prob:{floor}").predict(image)
    assert len({d["category_id"] for d in above}) == int((probs >= floor).sum()) >= 5
    assert parse_class_selection([1, 2]) == [1, 2]
    for bad in ["top:3", "topk:0", "prob:2", "some"]:
        with pytest.raises(ValueError, match="class selection"):
            parse_class_selection(bad)


CLASS_VALUES = st.one_of(st.integers(-3, 83), st.booleans(), st.floats(-2, 82, allow_nan=False),
                         st.sampled_from([np.int64(5), np.float32(2.0), "3", None]))
PIXELS = np.zeros((8, 8, 3), np.uint8)


@pytest.fixture(scope="module")
def analysed(tiny):
    localizer = Localizer(*tiny, img_size=32)
    return localizer, localizer.analyze(PIXELS)[0]


@fuzz(40)
@given(values=st.lists(CLASS_VALUES, max_size=3))
def test_class_indices_are_checked_the_same_everywhere(tiny, analysed, values):
    """``classes=[80]``, ``[-1]`` or ``[1.5]`` given to ``analyze`` raised a bare IndexError or was read as
    class 1; the constructor, ``analyze`` and ``detections`` now share one check: the same indices are
    accepted by all three, anything else is the same one-line ValueError."""
    localizer, analysis = analysed
    valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 80 for v in values)
    results = []
    for attempt in (lambda: Localizer(*tiny, img_size=32, classes=values).select(analysis.probs[None]),
                    lambda: localizer.analyze(PIXELS, classes=values)[0].classes.tolist(),
                    lambda: localizer.detections(analysis, classes=values)):
        try:
            results.append(attempt())
        except ValueError as exc:
            results.append(assert_one_line(exc))
    if valid:
        assert results[1] == [int(v) for v in values], (values, results)  # these maps, and no error anywhere
        assert not any(isinstance(r, str) for r in results), (values, results)
    else:
        assert all(isinstance(r, str) and "class indices" in r for r in results), (values, results)


@pytest.mark.parametrize("options", [{"method": "gradcam"}, {"method": "gradcampp"}, {"tta": True},
                                     {"recipe": "seed", "threshold": 0.5, "boxes": "largest"},
                                     {"recipe": "instances"}, {"recipe": "evidence", "boxes": "largest"}])
def test_methods_and_options_run(tiny, options):
    dets = Localizer(*tiny, img_size=64, classes="topk:4", **options).predict(gradient_image(70, 50))
    assert len({d["category_id"] for d in dets}) == 4
    if options.get("boxes") == "largest":
        assert len(dets) == 4


def test_bad_options_are_value_errors(tiny):
    for options in [{"method": "smoothgradcampp"}, {"method": "gradcam", "gradcam_layer": "layer9"},
                    {"method": "cam", "gradcam_layer": "layer3"}, {"recipe": "seed", "threshold": "mean"},
                    {"recipe": "seed", "boxes": "some"}, {"threshold": 0.5}, {"recipe": "nope"}, {"flip": "yes"}]:
        with pytest.raises(ValueError):
            Localizer(*tiny, **options)


def test_chunked_box_extraction_equals_all_maps_at_once():
    """Maps boxed a few at a time within a memory budget (one at a time when only one fits) give the boxes of all
    maps at once."""
    from camloc.boxes.seed import SEED_BYTES_PER_PIXEL

    raw = torch.randn(11, 6, 7)
    size = (45, 61)
    once = heatmaps_to_boxes(normalize_maps(raw, size).numpy())
    for chunk in (1, 3, 4, 11):
        chunked = boxes_from_raw_maps(raw, size, budget=chunk * size[0] * size[1] * SEED_BYTES_PER_PIXEL)
        assert chunked.class_index.tolist() == once.class_index.tolist()
        assert chunked.xywh.tolist() == once.xywh.tolist()
        np.testing.assert_allclose(chunked.heat, once.heat, rtol=1e-6)
    assert len(boxes_from_raw_maps(raw[:0], size)) == 0


@pytest.mark.parametrize("options", [{"recipe": "seed"}, {"box_scale": 4}, {"recipe": "instances"}])
def test_the_batch_api_equals_the_per_image_detections(tiny, options):
    """``detect`` boxes a whole batch in one call (on the device for grid recipes, image by image otherwise):
    the same detections, in the same order, as :meth:`Localizer.detections` of each analysed image (every
    detection: ``max_dets=0``)."""
    localizer = Localizer(*tiny, img_size=64, max_dets=0, **options)
    images = [gradient_image(60, 80, seed=1), gradient_image(45, 90, seed=2)[::-1].copy(), gradient_image(70, 50)]
    found = localizer.detect(images, image_ids=[11, 5, 11])
    expected = [d for analysis, image_id in zip(localizer.analyze(images), [11, 5, 11])
                for d in localizer.detections(analysis, image_id)]
    assert found.to_dicts() == expected and len(expected) > 3
    per_image = localizer.predict_batch(images)
    assert [d for dets in per_image for d in dets] == [{k: v for k, v in d.items() if k != "image_id"}
                                                      for d in expected]
    with pytest.raises(ValueError, match="3 images but 2 image ids"):
        localizer.detect(images, image_ids=[1, 2])


def test_bf16_backbone_keeps_float32_maps_close_to_the_fp32_ones(tiny):
    """``precision="bf16"`` (CPU autocast here, as on a GPU): maps and probabilities are float32, computed from
    the bf16 features, and close to the float32 network's."""
    image = gradient_image(60, 80)
    fp32 = Localizer(*tiny, img_size=64, precision="fp32").analyze(image)[0]
    bf16 = Localizer(*tiny, img_size=64, precision="bf16").analyze(image)[0]
    assert bf16.raw_maps.dtype == bf16.probs.dtype == torch.float32
    scale = fp32.raw_maps.abs().max()
    assert (bf16.raw_maps - fp32.raw_maps).abs().max() < 0.05 * scale
    assert (bf16.probs - fp32.probs).abs().max() < 0.05
    assert not torch.equal(bf16.raw_maps, fp32.raw_maps)  # the backbone really ran in bf16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        Localizer(*tiny, precision="fp64")


def test_per_image_classes_are_held_as_the_batch_union_and_gate_only_their_own(tiny):
    """Per-image class lists (and a gradient method's gated classes) are computed in class slots and held as the
    union of the batch's classes: each image's analysis lists its own classes with the maps computed alone, and
    the batch gate never boxes another image's class (its zero map)."""
    localizer = Localizer(*tiny, img_size=64, method="gradcam", classes="all")
    images = [gradient_image(60, 80, seed=1), gradient_image(45, 90, seed=2), gradient_image(70, 50)]
    own = [[3, 17], [5], [17, 40, 2]]
    batch = localizer.analyze_batch(localizer.pixels(images), own)
    assert batch.classes.tolist() == [2, 3, 5, 17, 40] and batch.held.sum(1).tolist() == [2, 1, 3]
    for b, analysis in enumerate(batch.images()):
        alone = localizer.analyze([images[b]], own[b])[0]
        assert analysis.classes.tolist() == sorted(own[b])
        torch.testing.assert_close(analysis.raw_maps, alone.raw_maps[alone.rows(sorted(own[b]))], atol=1e-5,
                                   rtol=1e-4)
    gate = batch.gate(localizer.recipe, localizer.supported)
    assert [torch.nonzero(g).flatten().tolist() for g in gate] == [sorted(k) for k in own]
    with pytest.raises(ValueError, match="3 images but class lists for 2"):
        localizer.analyze(images, own[:2])
    with pytest.raises(ValueError, match="class indices"):
        localizer.analyze(images, [[1], [80], [2]])


def test_no_detection_is_scored_zero(tiny):
    """A class whose map holds no positive evidence (its head row ≤ 0 on ReLU features) used to get the whole image
    with score 0 from ``seed``: every path now leaves it out (the other classes keep theirs) — unless every
    detection is asked for (``max_dets=0``: the recipe's own output, the course recipe's bit for bit)."""
    import copy

    model, meta = copy.deepcopy(tiny)
    with torch.no_grad():
        model.head.weight[3] = -model.head.weight[3].abs()
    localizer = Localizer(model, meta, img_size=64, recipe="seed", device="cpu", max_dets=1000)
    image = gradient_image(60, 80)
    analysis = localizer.analyze(image)[0]
    assert (analysis.raw_maps[3] <= 0).all()
    found = localizer.recipe.boxes(analysis.raw_maps[[3, 4]], analysis.probs[[3, 4]], analysis.size)
    assert found.score[found.class_index == 0].tolist() == [0.0]  # the recipe's stand-in box
    category = localizer.category_ids[3]
    paths = {"predict": localizer.predict(image), "detections": localizer.detections(analysis),
             "detect": localizer.detect([image]).to_dicts(),
             "baseline": localizer.baseline_detections(analysis, "full")}
    for name, dets in paths.items():
        assert len(dets) >= 5 and all(d["score"] > 0 for d in dets), name
        assert (category in {d["category_id"] for d in dets}) == (name == "baseline" and analysis.probs[3] > 0), name
    raw = Localizer(model, meta, img_size=64, recipe="seed", device="cpu", max_dets=0)
    for dets in (raw.predict(image), raw.detections(analysis), raw.detect([image]).to_dicts()):
        assert [d["score"] for d in dets if d["category_id"] == category] == [0.0]
