"""Small builders shared by tests (not fixtures: plain functions)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from camloc.classes import COCO_NAMES
from camloc.models import CamModel, build_model


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
