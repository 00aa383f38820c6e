import json
import os
import pickle
import shutil
import urllib.error

import pytest
import torch

from camloc import models
from camloc.cam import class_activation_maps
from camloc.models import ModelError, build_model, derive_coco_head, load_model, save_checkpoint
from camloc.models.classes import COCO_CATEGORY_IDS, COCO_NAMES, name_to_index
from camloc.models.imagenet_coco import IMAGENET_FOR_COCO, UNSUPPORTED_COCO_CLASSES, coco_groups
from tests.conftest import COCO80, IMAGENET1001, SHARED
from tests.helpers import random_head_model

ARCHES = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
          "convnext_tiny", "regnet_y_400mf"]


@pytest.mark.parametrize("arch", ARCHES)
def test_cam_mean_plus_bias_equals_logits(arch):
    """The CAM identity for every supported family: mean over space of W·A' plus b is the logit."""
    model, _ = random_head_model(arch)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        logits, features = model(images)
        cam_input, weight, bias = model.cam_terms(features)
        maps = class_activation_maps(cam_input, weight)
    assert maps.shape == (2, 80, *features.shape[-2:])
    assert logits.abs().max() > 0.1  # a non-trivial head, so the identity is not 0 == 0
    torch.testing.assert_close(maps.mean((-2, -1)) + bias, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.head_logits(features), logits, atol=1e-4, rtol=1e-4)  # after a bf16 backbone


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ModelError, match="not supported"):
        models.build_torchvision("vit_b_16", 80)


def test_checkpoint_round_trip_is_exact(tmp_path):
    model, meta = random_head_model("resnet18")
    path = tmp_path / "model.pt"
    save_checkpoint(model, meta, path, epoch=3)
    loaded, loaded_meta = load_model(path)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    assert loaded_meta["coco_category_ids"] == list(COCO_CATEGORY_IDS)
    assert loaded_meta["feature_layer"] == "layer4" and loaded_meta["activation"] == "sigmoid"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "camloc", "meta": Exploit()}))
    with pytest.raises(ModelError, match="refused"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_missing_checkpoints(tmp_path):
    model, meta = random_head_model("resnet18")
    save_checkpoint(model, meta, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "cut.pt")
    with pytest.raises(ModelError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pt")


def test_offline_imagenet_weights_name_the_file_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match=r"download https://download\.pytorch\.org/models/resnet18-.*\.pth to "):
        build_model("resnet18", list(COCO_NAMES), weights="imagenet")


@pytest.mark.realdata
def test_shared_state_dict_with_sidecar_loads():
    model, meta = load_model(COCO80)
    assert meta["arch"] == "mobilenet_v2" and meta["num_classes"] == 80 and meta["input_size"] == 448
    assert meta["coco_category_ids"] == list(COCO_CATEGORY_IDS) and meta["activation"] == "sigmoid"
    assert not model.training


@pytest.mark.realdata
def test_wrong_number_of_classes_is_a_clear_error(tmp_path):
    shutil.copy(IMAGENET1001, tmp_path / "m.pth")
    sidecar = json.loads(IMAGENET1001.with_suffix(".json").read_text())
    sidecar.update(num_classes=80, class_names=list(COCO_NAMES))
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="1001 outputs but the metadata says 80"):
        load_model(tmp_path / "m.pth")
    (tmp_path / "m.json").unlink()
    with pytest.raises(ModelError, match="needs its JSON sidecar"):
        load_model(tmp_path / "m.pth")


@pytest.mark.realdata
def test_fine_tune_model_copies_backbone_from_a_weights_file():
    source, _ = load_model(IMAGENET1001)
    model, meta = build_model("mobilenet_v2", list(COCO_NAMES), weights=IMAGENET1001)
    torch.testing.assert_close(model.net.features[3].conv[1][0].weight, source.net.features[3].conv[1][0].weight)
    assert model.head.out_features == 80 and meta["mean"] == [0.5, 0.5, 0.5]


def test_imagenet_table_names_resolve_and_unsupported_are_reported():
    groups = coco_groups(1000)
    assert len(groups) == 80
    assert groups[name_to_index("dog")] == list(range(151, 269))
    assert groups[name_to_index("cat")] == [281, 282, 283, 284, 285]
    assert all(not groups[name_to_index(n)] for n in UNSUPPORTED_COCO_CLASSES)
    assert "person" in UNSUPPORTED_COCO_CLASSES and "giraffe" in UNSUPPORTED_COCO_CLASSES
    assert len(UNSUPPORTED_COCO_CLASSES) + len(IMAGENET_FOR_COCO) == 80
    assert coco_groups(1001)[name_to_index("cat")] == [282, 283, 284, 285, 286]


@pytest.mark.realdata
def test_imagenet_names_in_table_match_shared_wordnet_index():
    index = json.loads((SHARED / "imagenet_class_index_torchvision_order.json").read_text())
    groups = coco_groups(1000)
    assert {index[str(i)][1] for i in groups[name_to_index("cat")]} == {
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert index[str(groups[name_to_index("teddy bear")][0])][0] == "n04399382"


@pytest.mark.realdata
def test_derived_coco_head_gives_group_probabilities_and_exact_cam_weights(tmp_path):
    model, meta = load_model(IMAGENET1001)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        imagenet_probs = torch.softmax(model(x)[0], -1)
    coco_model, coco_meta = derive_coco_head(model, meta)
    with torch.no_grad():
        logits, features = coco_model(x)
        _, weight, _ = coco_model.cam_terms(features)
    probs = models.probabilities(logits, coco_meta["activation"])
    dog = name_to_index("dog")
    torch.testing.assert_close(probs[:, dog], imagenet_probs[:, 152:270].sum(-1))
    assert (probs[:, name_to_index("person")] == 0).all()
    assert set(coco_meta["unsupported_classes"]) == set(UNSUPPORTED_COCO_CLASSES)
    # Per-image weights: the probability-weighted mix of member rows; the CAM of "cat" is their mix.
    member = torch.softmax(coco_model.head.linear(features.mean((-2, -1))), -1)[:, 282:287]
    expected = (member / member.sum(-1, keepdim=True)) @ coco_model.head.linear.weight[282:287]
    torch.testing.assert_close(weight[:, name_to_index("cat")], expected)
    save_checkpoint(coco_model, coco_meta, tmp_path / "coco.pt")
    reloaded, reloaded_meta = load_model(tmp_path / "coco.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)[0], logits)
        torch.testing.assert_close(coco_model.head_logits(features), logits)
    assert reloaded_meta["head"] == "imagenet_groups"
