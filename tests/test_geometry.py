"""Each model's map geometry: analytic, from the effective receptive field, and measured with the weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camloc.demo import DEMO_CHECKPOINT
from camloc.models import CamModel, ModelError, build_model, complete_meta, load_model, save_checkpoint
from camloc.models.geometry import (
    META_KEY,
    GeometryError,
    MapGeometry,
    analytic_geometry,
    geometry_entries,
    measured_geometry,
    model_geometry,
    receptive_field_centre,
)

#: (architecture, dilated, stride, offset): every family camloc supports, and the dilated variants.
FAMILIES = [
    ("resnet18", False, 32, 0.0), ("resnext50_32x4d", False, 32, 0.0), ("wide_resnet50_2", False, 32, 0.0),
    ("regnet_y_400mf", False, 32, 0.0), ("mobilenet_v2", False, 32, 0.0), ("mobilenet_v3_small", False, 32, 0.0),
    ("efficientnet_b0", False, 32, 0.0), ("densenet121", False, 32, 14.0), ("convnext_tiny", False, 32, 15.5),
    ("resnet50", True, 16, 0.0), ("mobilenet_v3_large", True, 16, 0.0),
]


def model_of(arch: str, dilate: bool) -> CamModel:
    torch.manual_seed(0)
    return build_model(arch, ["a", "b"], dilate=dilate)[0].eval()


@pytest.mark.parametrize("arch,dilate,stride,offset", FAMILIES, ids=lambda v: str(v))
def test_analytic_geometry_of_every_family(arch, dilate, stride, offset):
    """Symmetric padding puts a torchvision cell on pixel ``stride·i`` (half a cell up-left of the stretched grid's
    ``stride·i + 15.5``); DenseNet's 2×2 average pools and ConvNeXt's patchify layers move it down-right."""
    geometry = analytic_geometry(model_of(arch, dilate), None, 96)
    assert geometry == MapGeometry((stride, stride), (offset, offset), "analytic")


@pytest.mark.slow
@pytest.mark.parametrize("arch,dilate,stride,offset", FAMILIES, ids=lambda v: str(v))
def test_effective_receptive_field_is_centred_where_the_analytic_geometry_says(arch, dilate, stride, offset):
    """With weights drawn at random (the architecture alone), the centroid of ``|∂A(i, i)/∂x|`` is the analytic centre.
    The input is sized so that the cell sits at its centre: the image's borders then cut the field evenly."""
    cell = 3 if stride == 32 else 6
    centre = offset + stride * cell
    size = int(2 * centre + 1)
    found = receptive_field_centre(model_of(arch, dilate), None, size, [(cell, cell)])[0]
    assert found.tolist() == pytest.approx([centre, centre], abs=0.1 * stride)


def test_analytic_geometry_refuses_what_it_cannot_know():
    class Disagreeing(nn.Module):
        """Two branches whose cells sit half a pixel apart, summed."""

        def __init__(self):
            super().__init__()
            self.even = nn.Conv2d(3, 4, 2, stride=2)
            self.odd = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.features = nn.Identity()
            self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(4, 2))

        def forward(self, x):
            return self.classifier(self.features(self.even(x) + self.odd(x)).mean((-2, -1)))

    class Upsampling(Disagreeing):
        def forward(self, x):
            return self.classifier(self.features(F.interpolate(self.odd(x), scale_factor=2)).mean((-2, -1)))

    with pytest.raises(GeometryError, match="branches disagree"):
        analytic_geometry(CamModel(Disagreeing(), "mobilenet_v2"), None, 32)
    with pytest.raises(GeometryError, match="no geometry rule for interpolate"):
        analytic_geometry(CamModel(Upsampling(), "mobilenet_v2"), None, 32)


def shifted(model: CamModel, dy: int, dx: int) -> CamModel:
    """``model`` whose first layer reads the input ``(dy, dx)`` pixels further down-right: a property of the weights
    (a one-hot depthwise kernel off its centre) that the architecture's kernels, strides and paddings do not show."""
    reach = max(abs(dy), abs(dx))
    shift = nn.Conv2d(3, 3, 2 * reach + 1, padding=reach, groups=3, bias=False)
    with torch.no_grad():
        shift.weight.zero_()
        shift.weight[:, 0, reach + dy, reach + dx] = 1.0
    net = model.net
    net.features[0] = nn.Sequential(shift, net.features[0])
    return CamModel(net, model.arch).eval()


@pytest.mark.slow
def test_measured_geometry_sees_where_the_weights_look():
    """The demo model's maps are mirror-symmetric about a measured offset; moving where its first layer reads by
    (−6, +10) pixels moves the measured offset by as much, while the analytic geometry stays put."""
    model, _ = load_model(DEMO_CHECKPOINT)
    before = measured_geometry(model, 320, count=24)
    moved_model = shifted(load_model(DEMO_CHECKPOINT)[0], -6, 10)
    after = measured_geometry(moved_model, 320, count=24)
    assert analytic_geometry(moved_model, None, 320) == analytic_geometry(model, None, 320)
    assert before.stride == after.stride == (32.0, 32.0)
    assert [a - b for a, b in zip(after.offset, before.offset)] == pytest.approx([-6, 10], abs=2.5)


def test_model_geometry_is_measured_once_then_stored_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMLOC_CACHE_DIR", "none")
    model, meta = build_model("mobilenet_v2", ["a", "b"], input_size=64)
    calls = []
    fake = MapGeometry((32.0, 32.0), (3.0, -4.0), "measured")
    monkeypatch.setattr("camloc.models.geometry.cache.measured_geometry",
                        lambda m, size, layer=None: calls.append((size, layer)) or fake)
    assert model_geometry(model, None, 64) == fake
    assert model_geometry(model, None, 64) == fake and len(calls) == 1  # kept for these weights
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # new weights: measured again
    assert model_geometry(model, None, 64) == fake and len(calls) == 2
    twin, _ = build_model("mobilenet_v2", ["a", "b"], input_size=64)
    twin.load_state_dict(model.state_dict())  # the same weights in another model (loaded twice): not measured again
    assert model_geometry(twin, None, 64) == fake and len(calls) == 2
    meta = dict(meta, **{META_KEY: geometry_entries(model, [48, 64])})
    save_checkpoint(model, meta, tmp_path / "m.pt")
    loaded, loaded_meta = load_model(tmp_path / "m.pt")
    assert len(calls) == 3  # 48 was new
    assert model_geometry(loaded, None, 64, loaded_meta) == fake and len(calls) == 3  # read from the checkpoint
    assert model_geometry(loaded, "features", 48, loaded_meta) == fake and len(calls) == 3


def test_measured_geometry_is_kept_on_disk_once_per_machine(tmp_path, monkeypatch):
    """A new process (the in-memory cache emptied) reads the measured geometry back from the cache folder; a file
    that cannot be read is measured again and rewritten; a folder that cannot be written warns and goes on;
    ``none`` keeps nothing."""
    from camloc.models.geometry import cache, store

    monkeypatch.setenv("CAMLOC_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    fake = MapGeometry((32.0, 32.0), (3.0, -4.0), "measured")
    monkeypatch.setattr(cache, "measured_geometry", lambda m, size, layer=None: calls.append(size) or fake)

    def new_process():
        monkeypatch.setattr(cache, "_MEASURED", type(cache._MEASURED)())

    model, _ = build_model("mobilenet_v2", ["a", "b"], input_size=64)
    new_process()
    assert model_geometry(model, None, 64) == fake and model_geometry(model, None, 96) == fake and calls == [64, 96]
    [kept] = (tmp_path / "cache" / "geometry").glob("*.json")
    assert kept.name == f"{cache.weights_digest(model)}.json" and not list(kept.parent.glob("*.tmp"))
    new_process()
    assert model_geometry(model, None, 64) == fake and model_geometry(model, None, 96) == fake and calls == [64, 96]
    kept.write_text('{"version": 1, "entries": [{"lay')  # cut short
    new_process()
    assert model_geometry(model, None, 64) == fake and calls == [64, 96, 64]
    assert json.loads(kept.read_text())["version"] == store.MEASUREMENT_VERSION
    monkeypatch.setattr(store, "MEASUREMENT_VERSION", store.MEASUREMENT_VERSION + 1)  # another measurement
    new_process()
    assert model_geometry(model, None, 64) == fake and calls == [64, 96, 64, 64]
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CAMLOC_CACHE_DIR", str(tmp_path / "file"))  # a folder that cannot be made
    new_process()
    with pytest.warns(UserWarning, match="measured again next time"):
        assert model_geometry(model, None, 64) == fake
    monkeypatch.setenv("CAMLOC_CACHE_DIR", "none")
    new_process()
    assert model_geometry(model, None, 64) == fake and len(calls) == 6 and store.cache_folder() is None
    monkeypatch.delenv("CAMLOC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_folder() == tmp_path / "xdg" / "camloc" / "geometry"


def test_sessions_needing_the_same_geometry_at_once_measure_it_once(tmp_path, monkeypatch):
    """Two app sessions (threads; processes alike) asking for new weights' geometry at the same time: the second
    waits for the first's measurement and reads it from disk."""
    import threading
    import time

    from camloc.models.geometry import cache

    monkeypatch.setenv("CAMLOC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_MEASURED", type(cache._MEASURED)())
    calls = []
    fake = MapGeometry((32.0, 32.0), (1.0, 2.0), "measured")

    def slow(model, size, layer=None):
        calls.append(size)
        time.sleep(0.5)
        return fake

    monkeypatch.setattr(cache, "measured_geometry", slow)
    model, _ = build_model("mobilenet_v2", ["a", "b"], input_size=64)
    found = []
    sessions = [threading.Thread(target=lambda: found.append(model_geometry(model, None, 64))) for _ in range(2)]
    for session in sessions:
        session.start()
    for session in sessions:
        session.join()
    assert found == [fake, fake] and calls == [64]


@pytest.mark.realdata
@pytest.mark.parametrize("layer", ["features", "features.13"])
def test_the_kept_geometries_are_what_measuring_gives(layer):
    """tests/data/geometry (the shared weights' geometries every test session starts with) holds what
    :func:`measured_geometry` measures now: a change of the measurement without a new ``MEASUREMENT_VERSION``
    fails here."""
    from camloc.models.geometry import cache, store
    from tests.conftest import COCO80, KEPT_GEOMETRIES

    model, _ = load_model(COCO80)
    kept = json.loads((KEPT_GEOMETRIES / f"{cache.weights_digest(model)}.json").read_text())
    assert kept["version"] == store.MEASUREMENT_VERSION
    [entry] = [e for e in kept["entries"] if e["layer"] == layer and e["input_size"] == 336]
    measured = measured_geometry(model, 336, layer)
    assert list(measured.offset) == pytest.approx(entry["offset"], abs=1e-3)
    assert list(measured.stride) == entry["stride"] and measured.source == entry["source"]


@pytest.mark.parametrize("stored,message", [
    ("x", "must be a list"),
    ([{"layer": "features", "input_size": 64, "stride": [32, 0], "offset": [0, 0]}], "stride must be two finite"),
    ([{"layer": "features", "input_size": 64, "stride": [32, 32], "offset": [0, float("nan")]}], "offset must be"),
    ([{"layer": 3, "input_size": 64, "stride": [32, 32], "offset": [0, 0]}], "layer must be"),
    ([{"layer": "features", "input_size": 1.5, "stride": [32, 32], "offset": [0, 0]}], "input_size must be"),
])
def test_stored_geometry_is_checked_when_the_metadata_is(stored, message):
    meta = {"arch": "mobilenet_v2", "num_classes": 1, "class_names": ["a"], META_KEY: stored}
    with pytest.raises(ModelError, match=message):
        complete_meta(meta, "x.pt")
