"""Small builders shared by tests (not fixtures: plain functions)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from camloc.models import CamModel, build_model
from camloc.models.classes import COCO_NAMES


def random_head_model(arch: str = "resnet18", num_classes: int = 80, seed: int = 0) -> tuple[CamModel, dict]:
    """An untrained ``arch`` whose head has non-trivial random weights and biases, in eval mode."""
    torch.manual_seed(seed)
    names = list(COCO_NAMES) if num_classes == 80 else [f"c{i}" for i in range(num_classes)]
    model, meta = build_model(arch, names, input_size=96)
    nn.init.normal_(model.head.weight, std=0.5)
    nn.init.normal_(model.head.bias, std=0.5)
    return model.eval(), meta


def image_bytes(array: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def gradient_image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    return (base + rng.integers(0, 30, base.shape)).clip(0, 255).astype(np.uint8)


def count_tags(picture: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> int:
    """Filled label tags of ``colour`` in an RGB picture (``tolerance`` per channel, for JPEG): the text
    inside the tags is closed over, an erosion removes box outlines (lines up to 8 px wide), and what is
    left at least 8 px thick both ways is a tag (not outlines running side by side). For pictures whose
    tags are ≥ 17 px tall (images of 320 px and more)."""
    mask = (np.abs(picture.astype(np.int16) - np.array(colour, np.int16)).max(-1) <= tolerance).astype(np.uint8)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(cv2.erode(closed, np.ones((9, 9), np.uint8)))
    return int(((stats[1:, cv2.CC_STAT_WIDTH] >= 8) & (stats[1:, cv2.CC_STAT_HEIGHT] >= 8)).sum())
