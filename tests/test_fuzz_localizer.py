"""Fuzz: what the library's ``Localizer`` accepts at construction and at each call.

Contract: a batch is a list or tuple (empty: an empty result); one image alone (a path, bytes, a PIL image, an
array, a ``uint8 (3, H, W)`` tensor) is a batch of one in ``analyze``, ``detect`` and ``predict_batch`` alike —
never a sequence of rows or characters; anything else is a ``TypeError`` saying "pass a list of images". A
tensor of another dtype, layout or channel count is one ``ValueError`` naming ``uint8 (3, H, W)``;
``img_size`` is an integer from 32 to 4096 as the CLIs' ``--img-size``; ``classes`` is checked at construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from camloc.demo import DEMO_CHECKPOINT
from camloc.localize import Localizer
from camloc.models import MAX_INPUT_SIZE, MIN_INPUT_SIZE, load_model
from tests.fuzz_support import assert_one_line, fuzz, torch_threads
from tests.helpers import gradient_image


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def localizer(demo):
    return Localizer(*demo, img_size=64, recipe="seed", device="cpu")


def test_empty_batches_give_empty_results(localizer):
    """They used to raise torch's 'cannot reshape tensor of 0 elements'."""
    assert localizer.analyze([]) == [] and localizer.predict_batch([]) == [] and localizer.predict_batch(()) == []
    assert len(localizer.detect([])) == 0 and len(localizer.detect([], image_ids=[])) == 0
    with pytest.raises(ValueError, match="0 images but 1 image ids"):
        localizer.detect([], image_ids=[1])


def one_image_sources(tmp_path):
    array = gradient_image(12, 40)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    return {"array": array, "path": path, "path-string": str(path), "bytes": path.read_bytes(),
            "pil": Image.fromarray(array), "tensor": torch.from_numpy(array).permute(2, 0, 1).contiguous()}


@pytest.mark.parametrize("kind", ["array", "path", "path-string", "bytes", "pil", "tensor"])
def test_one_image_alone_is_a_batch_of_one_everywhere(localizer, tmp_path, kind):
    """A 12×40 array used to be 12 images of one row each (1 400 detections on image ids 0–11), and
    ``detect("x.png")`` a batch of five one-character paths ('/: is a folder')."""
    image = one_image_sources(tmp_path)[kind]
    alone = localizer.detect(image)
    listed = localizer.detect([image])
    assert set(alone.image.tolist()) <= {0} and np.array_equal(alone.bbox, listed.bbox)
    assert np.array_equal(alone.score, listed.score) and len(alone) >= 1
    assert localizer.predict_batch(image) == [localizer.predict(image)] == localizer.predict_batch([image])
    assert len(localizer.analyze(image)) == 1


@pytest.mark.parametrize("batch", [iter([np.zeros((4, 4, 3), np.uint8)]), {"a": 1}, 5, None, 2.5],
                         ids=["iterator", "dict", "int", "none", "float"])
def test_anything_else_is_a_type_error_that_asks_for_a_list(localizer, batch):
    for call in (localizer.analyze, localizer.detect, localizer.predict_batch):
        with pytest.raises(TypeError, match="pass a list of images"):
            call(batch)


BAD_TENSORS = {
    "float": torch.zeros(3, 8, 8), "float-in-0-1": torch.rand(3, 8, 8), "int64": torch.zeros(3, 8, 8, dtype=torch.long),
    "hwc": torch.zeros(8, 8, 3, dtype=torch.uint8), "four-channels": torch.zeros(4, 8, 8, dtype=torch.uint8),
    "grey-2d": torch.zeros(8, 8, dtype=torch.uint8), "one-channel": torch.zeros(1, 8, 8, dtype=torch.uint8),
    "batched": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "empty": torch.zeros(3, 0, 8, dtype=torch.uint8),
    "sparse": torch.zeros(3, 8, 8, dtype=torch.uint8).to_sparse(), "bool": torch.zeros(3, 8, 8, dtype=torch.bool),
    "scalar": torch.tensor(3, dtype=torch.uint8),
}


@pytest.mark.parametrize("name", sorted(BAD_TENSORS))
def test_a_tensor_of_another_dtype_layout_or_channel_count_is_one_value_error(localizer, name):
    """These used to raise torch's own errors from preprocessing."""
    tensor = BAD_TENSORS[name]
    calls = [lambda: localizer.detect([tensor]), lambda: localizer.analyze([tensor]),
             lambda: localizer.predict_batch([tensor]), lambda: localizer.analyze_batch([tensor])]
    if name not in ("scalar",):
        calls.append(lambda: localizer.detect(tensor))
    for call in calls:
        with pytest.raises(ValueError, match=r"must be uint8 \(3, H, W\)") as caught:
            call()
        assert_one_line(caught.value)


@fuzz(60)
@given(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(), st.text(max_size=6),
                 st.sampled_from([MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE, MAX_INPUT_SIZE, MAX_INPUT_SIZE + 1, 0, 7])))
def test_img_size_is_an_integer_in_the_clis_range(demo, value):
    """0 used to mean the checkpoint's size, 7 / −1 / 31 ran at 32, 1.5 at 1, '448' was accepted, 4097 and 10000
    ran (10000: over 6 GB)."""
    valid = type(value) is int and MIN_INPUT_SIZE <= value <= MAX_INPUT_SIZE
    try:
        localizer = Localizer(*demo, img_size=value, device="cpu")
    except (TypeError, ValueError) as exc:
        assert not valid and "img_size must be an integer from 32 to 4096" in assert_one_line(exc)
        return
    assert valid and localizer.img_size == value


def test_img_size_none_is_the_checkpoints_and_numpy_integers_are_integers(demo):
    assert Localizer(*demo, device="cpu").img_size == demo[1]["input_size"]
    assert Localizer(*demo, img_size=np.int64(64), device="cpu").img_size == 64


@pytest.mark.parametrize("classes", [[80], [6], [-1], [0, 6], [True], [1.5]])
def test_class_indices_are_checked_at_construction(demo, classes):
    """``classes=[80]`` used to be accepted and fail only at the first prediction."""
    with pytest.raises(ValueError, match="class indices") as caught:
        Localizer(*demo, classes=classes, device="cpu")
    assert_one_line(caught.value)


def test_valid_class_indices_are_accepted(demo, localizer):
    image = gradient_image(40, 50)
    chosen = Localizer(*demo, img_size=64, recipe="seed", classes=[0, 5], device="cpu")
    assert {d["category_id"] for d in chosen.predict(image)} <= {chosen.category_ids[0], chosen.category_ids[5]}
