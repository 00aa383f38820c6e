"""Fuzz: hostile checkpoints and sidecars at the model boundary (:func:`camloc.models.load_model`).

Contract: a :class:`ModelError` with a one-line message, or a model whose metadata has the promised
types and ranges, whose tensors are all finite, and whose detections are finite — never another
exception, never a silently reinterpreted field.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from camloc.localize import Localizer
from camloc.models import ModelError, build_model, family_of, load_model, save_checkpoint
from tests.fuzz_support import assert_one_line, torch_threads
from tests.helpers import gradient_image

NAMES = ["a", "b", "c"]
SIDECAR = {"arch": "mobilenet_v2", "num_classes": 3, "class_names": NAMES, "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25], "input_size": 32, "category_ids": [7, 8, 9]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A small 3-class MobileNetV2: its state_dict file, its camloc checkpoint, and the state itself."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model, meta = build_model("mobilenet_v2", NAMES, input_size=32)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    torch.save(state, folder / "base.pth")
    save_checkpoint(model, dict(meta, category_ids=[7, 8, 9]), folder / "base.pt")
    return {"folder": folder, "state": state, "meta": meta}


def load_or_refuse(path: Path) -> tuple | None:
    """Apply the contract; return (model, meta), or None when refused with a clear ModelError."""
    try:
        model, meta = load_model(path)
    except ModelError as exc:
        assert_one_line(exc)
        return None
    assert_sane(model, meta)
    return model, meta


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def assert_sane(model, meta) -> None:
    """What an accepted checkpoint promises, checked field by field, then a real prediction."""
    assert isinstance(meta, dict) and isinstance(meta["arch"], str)
    assert is_int(meta["num_classes"]) and meta["num_classes"] >= 1
    names = meta["class_names"]
    assert isinstance(names, list) and len(names) == meta["num_classes"] and all(isinstance(n, str) for n in names)
    for key in ("mean", "std"):
        values = meta[key]
        assert isinstance(values, list) and len(values) == 3
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    assert min(meta["std"]) > 0
    assert is_int(meta["input_size"]) and 32 <= meta["input_size"] <= 4096
    assert meta["feature_layer"] == family_of(meta["arch"]).feature_layer
    assert meta["activation"] in ("sigmoid", "softmax", "exp")
    for key in ("category_ids", "coco_category_ids"):
        if key in meta:
            ids = meta[key]
            assert isinstance(ids, list) and len(ids) == meta["num_classes"] and all(is_int(i) for i in ids)
            assert len(set(ids)) == len(ids)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{name} is not finite"
        if name.endswith("running_var"):
            assert (tensor >= 0).all(), f"{name} is negative"
    localizer = Localizer(model, meta, img_size=32, device="cpu")
    image = gradient_image(20, 24)
    analysis = localizer.analyze(image)[0]
    assert torch.isfinite(analysis.probs).all() and torch.isfinite(analysis.raw_maps).all()
    gated = torch.nonzero(localizer.select(analysis.probs[None])[0]).flatten().tolist()
    assert gated and len(localizer.boxes(analysis, gated)) >= len(gated), "an accepted model gave no boxes"
    ids = meta.get("category_ids", list(range(meta["num_classes"])))
    for det in localizer.predict(image):  # a random model's maps may hold no evidence: its boxes score 0, dropped
        assert det["category_id"] in ids and math.isfinite(det["score"]) and 0 < det["score"] <= 1
        assert all(math.isfinite(v) for v in det["bbox"])


def with_sidecar(base: dict, tmp_path: Path, sidecar: object = None, text: str | None = None) -> Path:
    """``base.pth`` (hard-linked) with the given sidecar document (or raw text) beside it."""
    path = tmp_path / "model.pth"
    os.link(base["folder"] / "base.pth", path)
    path.with_suffix(".json").write_text(text if text is not None else json.dumps(sidecar))
    return path


# ----------------------------------------------------------------------------------------------
# sidecars and metadata
# ----------------------------------------------------------------------------------------------

HOSTILE_FIELDS = {
    "arch": [None, 5, ["mobilenet_v2"], "vit_b_16", "resnet18", "", "mobilenet", "mobilenet_v2 ", "MOBILENET_V2"],
    "num_classes": [3.0, "3", True, 0, -1, 2, 4, 10**7, 10**30, None, [3], float("nan"), float("inf")],
    "class_names": ["abc", ["a", "b"], ["a", "b", 3], ["a", "a", "b"], None, {"a": 1, "b": 2, "c": 3},
                    [["a"], "b", "c"], ["a", "b", None], [], 3],
    "mean": [[0.5, 0.5], [float("nan"), 0.5, 0.5], [float("inf"), 0.5, 0.5], "0.5", None, [True, 0.0, 0.0],
             [0.5, 0.5, "x"], 0.5, [0.5, 0.5, 0.5, 0.5], [1e300, 0.5, 0.5]],
    "std": [[0.0, 0.25, 0.25], [-0.25, 0.25, 0.25], [float("nan"), 0.25, 0.25], [float("inf"), 0.25, 0.25],
            [1e-320, 0.25, 0.25], "0.25", None, [0.25], [1e300, 0.25, 0.25]],
    "input_size": [0, -1, 31, 4097, 10**9, 224.0, "224", True, None, float("nan"), [224]],
    "feature_layer": ["layer4", "", 5, "classifier.1", None, "features.0", "features.."],
    "activation": ["relu", 5, None, "", ["sigmoid"]],
    "head": ["imagenet_groups", "foo", None, 3],
    "category_ids": [[7, 8], [7, 8, "9"], [7.0, 8.0, 9.0], [7, 7, 8], [True, 8, 9], "789", None, [7, 8, 2**64],
                     [7, 8, 9, 10], [7, 8, 1.5]],
    "coco_category_ids": [[1, 2], [1, 2, "3"], [1.0, 2.0, 3.0], [1, 1, 2], None],
    "arch_kwargs": [{"weights": "DEFAULT"}, {"foo": 1}, [], "x", {"dilated": True},
                    {"replace_stride_with_dilation": [False, False, True]}, {"progress": True}],
    "imagenet_outputs": [10**7, "1000", -1],
    "unsupported_classes": ["abc", [1], ["zzz"], None],
}
META_CASES = [(key, value) for key, values in HOSTILE_FIELDS.items() for value in values]


@pytest.mark.parametrize(("key", "value"), META_CASES, ids=[f"{k}={v!r}"[:60] for k, v in META_CASES])
def test_hostile_sidecar_field(base, tmp_path, key, value):
    load_or_refuse(with_sidecar(base, tmp_path, dict(SIDECAR, **{key: value})))


@pytest.mark.parametrize("key", list(SIDECAR))
def test_sidecar_without_a_field(base, tmp_path, key):
    sidecar = {k: v for k, v in SIDECAR.items() if k != key}
    loaded = load_or_refuse(with_sidecar(base, tmp_path, sidecar))
    if key in ("mean", "std", "category_ids"):
        assert loaded is not None, f"a sidecar without the optional {key!r} was refused"


VALID_VARIANTS = [{"input_size": 224}, {"activation": "softmax"}, {"feature_layer": "features"},
                  {"mean": [0, 0, 0], "std": [1, 1, 1]}, {"category_ids": [-1, 0, 2**40]}, {"arch_kwargs": {}},
                  {"class_names": ["person", "x y", "ü"]}, {"extra": {"anything": [1, None]}}]


@pytest.mark.parametrize("change", VALID_VARIANTS, ids=[str(v)[:50] for v in VALID_VARIANTS])
def test_valid_sidecar_variants_are_accepted(base, tmp_path, change):
    assert load_or_refuse(with_sidecar(base, tmp_path, dict(SIDECAR, **change))) is not None


SIDECAR_DOCUMENTS = {"list": "[]", "string": '"x"', "number": "3", "null": "null", "true": "true", "empty": "{}",
                     "torn": '{"arch": "mobilenet_v2", "num', "not-utf8": "\udcff\udcfe", "deep": "[" * 100_000,
                     "huge-number": '{"arch": "mobilenet_v2", "num_classes": 1e999, "class_names": ["a","b","c"]}',
                     "nan-literal": '{"arch": "mobilenet_v2", "num_classes": NaN, "class_names": ["a","b","c"]}'}


@pytest.mark.parametrize("name", sorted(SIDECAR_DOCUMENTS))
def test_malformed_sidecar_document_is_refused(base, tmp_path, name):
    path = tmp_path / "model.pth"
    os.link(base["folder"] / "base.pth", path)
    path.with_suffix(".json").write_bytes(SIDECAR_DOCUMENTS[name].encode("utf-8", "surrogateescape"))
    assert load_or_refuse(path) is None


# ----------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------

FIRST_CONV, HEAD_BIAS, BN = "features.0.0.weight", "classifier.1.bias", "features.0.1"


def poke(key: str, value: float, index: int = 0):
    def change(state):
        tensor = state[key].clone()
        tensor.view(-1)[index] = value
        return dict(state, **{key: tensor})
    return change


def retype(key: str, convert):
    return lambda state: dict(state, **{key: convert(state[key])})


STATE_CASES = {
    "nan-weight": poke(FIRST_CONV, float("nan")),
    "inf-weight": poke(FIRST_CONV, float("inf"), 5),
    "-inf-bias": poke(HEAD_BIAS, float("-inf")),
    "nan-running-mean": poke(f"{BN}.running_mean", float("nan")),
    "inf-running-var": poke(f"{BN}.running_var", float("inf")),
    "negative-running-var": poke(f"{BN}.running_var", -1.0),
    "int-weight": retype(FIRST_CONV, lambda t: t.round().long()),
    "bool-weight": retype(FIRST_CONV, lambda t: t > 0),
    "complex-weight": retype(FIRST_CONV, lambda t: t.to(torch.complex64)),
    "sparse-weight": retype(HEAD_BIAS, lambda t: t.to_sparse()),
    "float-batches-tracked": retype(f"{BN}.num_batches_tracked", lambda t: t.float() + 0.5),
    "wrong-shape": retype(HEAD_BIAS, lambda t: torch.zeros(5)),
    "missing-key": lambda state: {k: v for k, v in state.items() if k != HEAD_BIAS},
    "extra-key": lambda state: dict(state, stray=torch.zeros(1)),
    "non-tensor-value": lambda state: dict(state, **{HEAD_BIAS: [0.0, 0.0, 0.0]}),
    "expanded-view": retype(FIRST_CONV, lambda t: torch.zeros(1).expand(t.shape)),
    "huge-expanded-head": lambda state: dict(state, **{"classifier.1.weight": torch.zeros(1).expand(10**8, 1280),
                                                        "classifier.1.bias": torch.zeros(1).expand(10**8)}),
    "empty": lambda state: {},
}
VALID_STATES = {"float64": retype(FIRST_CONV, lambda t: t.double()), "float16": retype(FIRST_CONV, lambda t: t.half()),
                "bfloat16": retype(FIRST_CONV, lambda t: t.bfloat16())}


@pytest.mark.parametrize("name", sorted(STATE_CASES))
@pytest.mark.parametrize("container", ["state_dict", "camloc"])
def test_hostile_tensors_are_refused(base, tmp_path, name, container):
    state = STATE_CASES[name](base["state"])
    path = tmp_path / "model.pth"
    if container == "camloc":
        torch.save({"format": "camloc", "version": 1, "meta": dict(SIDECAR), "state_dict": state}, path)
    else:
        torch.save(state, path)
        path.with_suffix(".json").write_text(json.dumps(SIDECAR))
    assert load_or_refuse(path) is None, f"{name} was accepted"


@pytest.mark.parametrize("name", sorted(VALID_STATES))
def test_other_float_dtypes_are_accepted(base, tmp_path, name):
    path = tmp_path / "model.pth"
    torch.save(VALID_STATES[name](base["state"]), path)
    path.with_suffix(".json").write_text(json.dumps(SIDECAR))
    assert load_or_refuse(path) is not None


CHECKPOINT_CASES = {
    "meta-list": lambda p: dict(p, meta=[1, 2]),
    "meta-none": lambda p: dict(p, meta=None),
    "state-list": lambda p: dict(p, state_dict=[1]),
    "no-state": lambda p: {k: v for k, v in p.items() if k != "state_dict"},
    "meta-class-names-string": lambda p: dict(p, meta=dict(p["meta"], class_names="abc")),
    "meta-num-classes-float": lambda p: dict(p, meta=dict(p["meta"], num_classes=3.0)),
    "meta-nan-std": lambda p: dict(p, meta=dict(p["meta"], std=[float("nan")] * 3)),
    "meta-input-size-0": lambda p: dict(p, meta=dict(p["meta"], input_size=0)),
    "meta-short-ids": lambda p: dict(p, meta=dict(p["meta"], category_ids=[1])),
    "meta-tensor-mean": lambda p: dict(p, meta=dict(p["meta"], mean=torch.tensor([0.5, 0.5, 0.5]))),
    "not-a-dict": lambda p: [p["state_dict"]],
    "a-tensor": lambda p: torch.zeros(3),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_CASES))
def test_hostile_camloc_checkpoint_is_refused(base, tmp_path, name):
    payload = torch.load(base["folder"] / "base.pt", weights_only=True)
    torch.save(CHECKPOINT_CASES[name](payload), tmp_path / "model.pt")
    assert load_or_refuse(tmp_path / "model.pt") is None


# ----------------------------------------------------------------------------------------------
# pickles
# ----------------------------------------------------------------------------------------------

def small_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "camloc", "version": 1, "meta": dict(SIDECAR), "state_dict": {"w": torch.ones(2, 2)}},
               buffer)
    return buffer.getvalue()


def with_pickle(data: bytes, pickled: bytes) -> bytes:
    """The zip checkpoint ``data`` with its ``data.pkl`` replaced (other records unchanged)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            target.writestr(name, pickled if name.endswith("/data.pkl") else source.read(name))
    return out.getvalue()


SMALL = small_checkpoint()
SMALL_PICKLE = zipfile.ZipFile(io.BytesIO(SMALL)).read(
    next(n for n in zipfile.ZipFile(io.BytesIO(SMALL)).namelist() if n.endswith("/data.pkl")))
CRAFTED_PICKLES = {
    "memo-miss": b"\x80\x02h\x05.", "pop-empty": b"\x80\x020.", "short-int": b"\x80\x02J\x01",
    "empty": b"", "stop-only": b".", "mark-no-end": b"\x80\x02(K\x01", "dict-odd": b"\x80\x02}(K\x01u.",
    "setitem-no-dict": b"\x80\x02K\x01K\x02K\x03s.", "append-to-int": b"\x80\x02K\x01K\x02a.",
    "long-binunicode": b"\x80\x02X\xff\xff\xff\x7fab.",
    "frame-past-end": b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00.",
    "persid-garbage": b"\x80\x02X\x01\x00\x00\x00aQ.", "reduce-global": b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idR.",
    "proto-9": b"\x80\x09N.", "plain-list": pickle.dumps([1, 2, 3], protocol=2),
    "set": pickle.dumps({"format": "camloc", "meta": {1, 2}}, protocol=2),
}


@pytest.mark.parametrize("name", sorted(CRAFTED_PICKLES))
def test_malformed_pickle_is_refused(tmp_path, name):
    path = tmp_path / "model.pt"
    path.write_bytes(with_pickle(SMALL, CRAFTED_PICKLES[name]))
    assert load_or_refuse(path) is None


@pytest.mark.parametrize("seed", range(40))
def test_mutated_pickle_is_refused(tmp_path, seed):
    rng = np.random.default_rng(seed)
    pickled = bytearray(SMALL_PICKLE)
    for _ in range(int(rng.integers(1, 4))):
        pickled[int(rng.integers(len(pickled)))] = int(rng.integers(256))
    path = tmp_path / "model.pt"
    path.write_bytes(with_pickle(SMALL, bytes(pickled)))
    assert load_or_refuse(path) is None  # even a readable mutant does not fit a MobileNetV2


def test_compressed_archive_is_refused(tmp_path):
    """A deflated record could expand a small file into gigabytes: torch.save never writes one."""
    source = zipfile.ZipFile(io.BytesIO(SMALL))
    with zipfile.ZipFile(tmp_path / "model.pt", "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    assert load_or_refuse(tmp_path / "model.pt") is None


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 400, 800, 1200, 1500, -30, -1])
def test_truncated_checkpoint_file_is_refused(tmp_path, cut):
    path = tmp_path / "model.pt"
    path.write_bytes(SMALL[:cut])
    assert load_or_refuse(path) is None


@pytest.mark.parametrize("seed", range(20))
def test_mutated_checkpoint_file_is_refused(tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    data = bytearray(SMALL)
    for _ in range(int(rng.integers(1, 6))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(data))
    assert load_or_refuse(path) is None


# ----------------------------------------------------------------------------------------------
# verification: the archive's CRC-32s, the weights' magnitudes, the version
# ----------------------------------------------------------------------------------------------

HEAD_WEIGHT = "classifier.1.weight"


def flipped(data: bytes, tensor: torch.Tensor, bit: int) -> bytes:
    """``data`` (a checkpoint file) with bit ``bit`` of the first float32 of ``tensor``'s bytes flipped."""
    at = data.find(tensor.numpy().tobytes()[:64])
    assert at > 0
    damaged = bytearray(data)
    damaged[at + bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@pytest.mark.parametrize("bit", [30, 23, 0], ids=["top-exponent-bit", "low-exponent-bit", "low-mantissa-bit"])
def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_entry(base, tmp_path, bit):
    """Bit rot in a weight used to load silently (a flipped top exponent bit made one weight 3.5e37)."""
    path = tmp_path / "model.pt"
    path.write_bytes(flipped((base["folder"] / "base.pt").read_bytes(), base["state"][HEAD_WEIGHT], bit))
    with pytest.raises(ModelError, match=r"its entry archive/data/\d+ is damaged \(the CRC-32"):
        load_model(path)


WEIGHTS_OUT_OF_BOUNDS = {
    "flipped-top-exponent-bit": (HEAD_WEIGHT, lambda t: t.view(-1).__setitem__(0, 3.5e37)),
    "head-times-1e30": (HEAD_WEIGHT, lambda t: t.mul_(1e30)),
    "feature-weight-2e4": (FIRST_CONV, lambda t: t.view(-1).__setitem__(7, -2e4)),
    "running-mean-1e5": (f"{BN}.running_mean", lambda t: t.view(-1).__setitem__(0, 1e5)),
    "running-var-1e9": (f"{BN}.running_var", lambda t: t.view(-1).__setitem__(0, 1e9)),
}


@pytest.mark.parametrize("name", sorted(WEIGHTS_OUT_OF_BOUNDS))
@pytest.mark.parametrize("crc", [True, False], ids=["with-crc", "without-crc"])
def test_weights_beyond_the_bound_are_refused_naming_the_tensor(base, tmp_path, name, crc):
    """Damage that happened before saving (or an archive written without CRC-32s): the magnitude check names the
    tensor. Head weights ×1e38 used to load and fail at predict time as 'unexpected ValueError'."""
    from torch.utils.serialization import config

    key, change = WEIGHTS_OUT_OF_BOUNDS[name]
    state = {k: v.clone() for k, v in base["state"].items()}
    change(state[key])
    path = tmp_path / "model.pth"
    saved = config.save.compute_crc32
    config.save.compute_crc32 = crc
    try:
        torch.save(state, path)
    finally:
        config.save.compute_crc32 = saved
    path.with_suffix(".json").write_text(json.dumps(SIDECAR))
    with pytest.raises(ModelError, match=f"tensor {key} holds .*, beyond the ±1e\\+0(4|8)"):
        load_model(path)


def test_an_archive_without_crcs_loads_and_its_top_bit_flips_are_still_caught(base, tmp_path):
    from torch.utils.serialization import config

    path = tmp_path / "model.pth"
    config.save.compute_crc32 = False
    try:
        torch.save(base["state"], path)
    finally:
        config.save.compute_crc32 = True
    path.with_suffix(".json").write_text(json.dumps(SIDECAR))
    assert load_or_refuse(path) is not None
    path.write_bytes(flipped(path.read_bytes(), base["state"][HEAD_WEIGHT], 30))
    with pytest.raises(ModelError, match=f"tensor {HEAD_WEIGHT} holds"):
        load_model(path)


@pytest.mark.parametrize("version", [2, 99, "1", None, True, 0, -1, 1.0])
def test_checkpoint_version_is_checked(base, tmp_path, version):
    payload = torch.load(base["folder"] / "base.pt", weights_only=True)
    torch.save(dict(payload, version=version), tmp_path / "model.pt")
    expected = "newer camloc" if version in (2, 99) and type(version) is int else "checkpoint version is"
    with pytest.raises(ModelError, match=expected):
        load_model(tmp_path / "model.pt")
