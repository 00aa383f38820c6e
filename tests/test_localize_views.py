"""TTA views computed one at a time (as the app caches them) give exactly the Localizer's TTA analysis."""

import pytest
import torch

from camloc.localize import Analysis, Localizer
from tests.helpers import gradient_image, random_head_model


@pytest.mark.parametrize("method", ["cam", "gradcampp"])
def test_views_one_by_one_equal_the_tta_analysis(method):
    model, meta = random_head_model("resnet18", num_classes=5)
    tta = Localizer(model, meta, method=method, tta=True, device="cpu")
    plain = Localizer(model, meta, method=method, recipe="seed", device="cpu")  # one view
    image, classes = gradient_image(90, 130), [1, 3]
    whole = tta.analyze(image, classes)[0]
    views = [tta.analyze(image, classes, views=[view])[0] for view in tta.views()]
    joined = Analysis.average(views)
    assert len(views) == 6 and torch.equal(joined.raw_maps, whole.raw_maps) and torch.equal(joined.probs, whole.probs)
    assert joined.size == whole.size == (90, 130) and joined.classes.tolist() == classes
    # the plain pass is one of the TTA views: an app that has it cached computes 5 views, not 6
    single = plain.analyze(image, classes)[0]
    same = views[tta.views().index(plain.views()[0])]
    assert torch.equal(single.raw_maps, same.raw_maps) and torch.equal(single.probs, same.probs)
