"""Faithfulness metrics: the definitions computed one perturbed image at a time, their direction on a
scorer whose evidence is known, and parity with torchcam's metrics on real COCO images."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchcam.methods as tc
from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

from camloc.evaluation import Faithfulness, confidence_change, insertion_deletion
from camloc.io.images import load_image
from camloc.localize import Localizer
from camloc.models import load_model
from tests.conftest import COCO80, VAL_IMAGES
from tests.helpers import gradient_image, random_head_model

SIZE = 16


def quadrant_scorer(x: torch.Tensor) -> torch.Tensor:
    """Class 0's probability rises with the top-left quadrant's brightness, class 1's with the rest."""
    inside = x[:, :, : SIZE // 2, : SIZE // 2].mean((1, 2, 3))
    outside = x.mean((1, 2, 3)) * 4 / 3 - inside / 3
    return torch.sigmoid(torch.stack([4 * inside - 2, 4 * outside - 2], 1))


def one_at_a_time(score, image, heat, k, steps):
    """Deletion and insertion AUC of one pair, by the definition: one perturbed image per step."""
    order = np.argsort(-heat.flatten().numpy(), kind="stable")
    step = -(-heat.numel() // steps)
    counts = [*range(0, heat.numel(), step), heat.numel()]
    deletion, insertion = [], []
    for c in counts:
        top = torch.zeros(heat.numel(), dtype=torch.bool)
        top[torch.from_numpy(order[:c].copy())] = True
        top = top.reshape(heat.shape)
        deletion.append(float(score((image * ~top)[None])[0, k]))
        insertion.append(float(score((image * top)[None])[0, k]))
    fractions = np.array(counts) / heat.numel()
    return np.trapezoid(insertion, fractions), np.trapezoid(deletion, fractions)


def test_measures_equal_their_definition_and_reward_the_right_map():
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) + 0.5
    quadrant = torch.zeros(SIZE, SIZE)
    quadrant[: SIZE // 2, : SIZE // 2] = 1.0
    noise = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 0.1
    right, wrong = quadrant * 0.9 + noise, (1 - quadrant) * 0.9 + noise
    heatmaps = torch.stack([right, wrong, right, wrong])
    owner, classes = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])
    insertion, deletion = insertion_deletion(quadrant_scorer, images, heatmaps, owner, classes, steps=5, batch_size=3)
    for i in range(4):
        expected = one_at_a_time(quadrant_scorer, images[owner[i]], heatmaps[i], int(classes[i]), 5)
        assert (float(insertion[i]), float(deletion[i])) == pytest.approx(expected, abs=1e-12)
    assert insertion[0] > insertion[1] and deletion[0] < deletion[1]  # class 0 lives in the quadrant
    assert deletion[3] < insertion[3]  # class 1 lives outside it: the "wrong" map is right for class 1
    drop, increase = confidence_change(quadrant_scorer, images, heatmaps, owner, classes, batch_size=1)
    for i in range(4):
        p = float(quadrant_scorer(images[owner[i]][None])[0, classes[i]])
        o = float(quadrant_scorer((images[owner[i]] * heatmaps[i])[None])[0, classes[i]])
        assert float(drop[i]) == pytest.approx(max(0.0, p - o) / p, abs=1e-12)
        assert float(increase[i]) == float(p < o)
    assert drop[0] < drop[1]  # keeping the quadrant keeps class 0's confidence
    again = insertion_deletion(quadrant_scorer, images, heatmaps, owner, classes, steps=5, batch_size=64)
    torch.testing.assert_close(again, (insertion, deletion))


def test_the_accumulator_reads_analyses_and_skips_classes_without_a_map():
    model, meta = random_head_model("resnet18")
    localizer = Localizer(model, meta, img_size=32, method="gradcam", classes="topk:2", recipe="multilevel")
    images = [load_image(gradient_image(40, 50, seed=s)) for s in (1, 2)]
    analyses = localizer.analyze(images)
    held = [a.classes.tolist() for a in analyses]
    faith = Faithfulness(steps=4, batch_size=8)
    faith.add_analyses(localizer, images, analyses, [[held[0][0], 79 if 79 not in held[0] else 78], held[1]])
    result = faith.result()
    assert result["num_maps"] == 3 and result["steps"] == 4  # the class without a map is skipped
    assert 0 <= result["average_drop"] <= 100 and 0 <= result["increase_in_confidence"] <= 100
    assert 0 <= result["deletion_auc"] <= 1 and 0 <= result["insertion_auc"] <= 1
    assert Faithfulness().result()["average_drop"] is None


@pytest.mark.realdata
def test_parity_with_torchcam_metrics_on_real_images():
    """Same numbers as torchcam's ``ClassificationMetric`` and ``DeletionInsertionMetric`` given the same maps
    (torchcam's Grad-CAM of each image's top class, normalised at its grid and upsampled as torchcam does).
    Stated difference: torchcam divides the drop by ``p + 1e-7``."""
    model, meta = load_model(COCO80)
    names = ["000000005001.jpg", "000000010764.jpg", "000000020992.jpg"]
    images = Localizer(model, meta, img_size=96, device="cpu").to_tensor([load_image(VAL_IMAGES / n) for n in names])
    sigmoid = functools.partial(torch.sigmoid)
    with tc.GradCAM(model.net, "features.13") as extractor:
        scores = sigmoid(model.net(images))
        classes = scores.argmax(1)
        grid = extractor(classes.tolist(), scores)[0]  # ReLU, min-max at the 6×6 grid
        heatmaps = F.interpolate(grid[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0].detach()
        classification = ClassificationMetric(extractor, sigmoid)
        classification.update(images, classes.tolist())
        ordering = DeletionInsertionMetric(extractor, sigmoid, steps=6, batch_size=7)
        ordering.update(images, classes.tolist())
    score = lambda x: torch.sigmoid(model.net(x))  # noqa: E731
    owner = torch.arange(3)
    drop, increase = confidence_change(score, images, heatmaps, owner, classes)
    theirs = classification.summary()
    assert float(drop.mean()) == pytest.approx(theirs["avg_drop"], rel=1e-5)
    assert float(increase.mean()) == theirs["conf_increase"]
    insertion, deletion = insertion_deletion(score, images, heatmaps, owner, classes, steps=6, batch_size=5)
    theirs = ordering.summary()
    assert float(insertion.mean()) == pytest.approx(theirs["insertion_auc"], rel=1e-5, abs=1e-7)
    assert float(deletion.mean()) == pytest.approx(theirs["deletion_auc"], rel=1e-5, abs=1e-7)
    assert float(drop.max()) > 0 and float(insertion.mean()) != float(deletion.mean())  # not trivially 0 == 0
