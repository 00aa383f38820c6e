"""Device-side preprocessing: grouped resizes equal one-by-one resizes; normalisation is the Localizer's."""

import torch
from torchvision.transforms.v2 import functional as TF

from camloc.io.preprocess import normalise, resize_square


def test_images_of_the_same_size_resized_together_equal_one_by_one():
    torch.manual_seed(0)
    shapes = [(480, 640), (480, 640), (427, 640), (480, 640), (640, 480), (37, 53)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in shapes]
    together = resize_square(images, 96, "cpu")
    assert together.dtype == torch.uint8 and together.shape == (6, 3, 96, 96)
    assert torch.equal(together, torch.stack([TF.resize(im, [96, 96], antialias=True) for im in images]))


def test_normalise_is_x_over_255_minus_mean_over_std():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = torch.tensor([0.5, 0.2, 0.1]).view(1, 3, 1, 1), torch.tensor([0.5, 0.1, 0.9]).view(1, 3, 1, 1)
    out = normalise(pixels, mean, std)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
