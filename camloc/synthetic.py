"""A synthetic COCO-format localisation benchmark with known ground truth.

Scenes of ``size × size`` pixels on a cluttered background (smooth colour noise, grey
distractor strokes and blobs) hold 1–``max_objects`` objects (default 4) of 1–3 classes. Each class has its own shape,
colour and texture, so image-level labels are learnable; objects vary in scale (12–60 % of the
side), position (anywhere, not centred), count, and occlude each other, so localisation is not
trivial. The ground-truth box of an object is the bounding box of its *visible* pixels and its
``area`` their count; objects left with fewer than ``MIN_VISIBLE`` visible pixels are dropped.

Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``: the data
set is a pure function of its arguments.

``python -m camloc.synthetic --out DIR --train N --val M --classes K --size S --seed X`` writes
``DIR/{train,val}/*.jpg`` and ``DIR/annotations/instances_{train,val}.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from camloc.io.atomic import atomic_write_json
from camloc.runtime.errors import say

MIN_VISIBLE = 40


@dataclass(frozen=True)
class ObjectClass:
    """Shape, base colour (RGB) and texture of one synthetic category."""

    name: str
    shape: str
    color: tuple[int, int, int]
    texture: str


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("red disc", "disc", (220, 40, 40), "solid"),
    ObjectClass("blue square", "square", (40, 70, 220), "stripes"),
    ObjectClass("green triangle", "triangle", (40, 190, 60), "solid"),
    ObjectClass("yellow star", "star", (235, 205, 30), "dots"),
    ObjectClass("magenta ring", "ring", (210, 50, 200), "solid"),
    ObjectClass("cyan cross", "cross", (30, 200, 210), "checker"),
    ObjectClass("orange diamond", "diamond", (245, 130, 20), "stripes"),
    ObjectClass("white hexagon", "hexagon", (245, 245, 245), "dots"),
    ObjectClass("purple bar", "bar", (120, 50, 170), "checker"),
    ObjectClass("brown heart", "heart", (140, 80, 30), "solid"),
)
SPLITS = {"train": 0, "val": 1}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[np.ndarray]:
    """Outline(s) of a shape of radius ``r`` centred at ``(cx, cy)``, rotated by ``angle``."""
    def ring(n: int, radii: np.ndarray | float, offset: float = 0.0) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + angle + offset
        return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)

    if shape == "square":
        return [ring(4, r, np.pi / 4)]
    if shape == "triangle":
        return [ring(3, r, -np.pi / 2)]
    if shape == "diamond":
        pts = ring(4, r)
        pts[:, 0] = cx + (pts[:, 0] - cx) * 0.6
        return [pts]
    if shape == "hexagon":
        return [ring(6, r)]
    if shape == "star":
        return [ring(10, np.where(np.arange(10) % 2 == 0, r, 0.45 * r), -np.pi / 2)]
    if shape == "cross":
        w = 0.33 * r
        base = np.array([[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r], [-w, w], [-r, w],
                         [-r, -w], [-w, -w]])
    elif shape == "bar":
        base = np.array([[-r, -0.3 * r], [r, -0.3 * r], [r, 0.3 * r], [-r, 0.3 * r]])
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        base = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t)
                                                 - np.cos(4 * t))], 1) * (r / 17)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [base @ rot.T + [cx, cy]]


def _mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if shape in ("disc", "ring"):
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1, lineType=cv2.LINE_8)
        if shape == "ring":
            cv2.circle(mask, (round(cx), round(cy)), round(0.55 * r), 0, -1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    polys = [np.round(p).astype(np.int32) for p in _polygon(shape, cx, cy, r, angle)]
    cv2.fillPoly(mask, polys, 1)
    return mask.astype(bool)


def _texture(kind: str, color: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.array(color, np.float32) * rng.uniform(0.8, 1.1)
    period = rng.integers(4, 8)
    if kind == "stripes":
        pattern = ((xx + yy) // period) % 2
    elif kind == "dots":
        pattern = ((xx % period) < 2) & ((yy % period) < 2)
    elif kind == "checker":
        pattern = ((xx // period) + (yy // period)) % 2
    else:
        pattern = np.zeros((size, size))
    shade = 1.0 - 0.35 * pattern[..., None]
    return np.clip(base * shade, 0, 255)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    low = rng.uniform(60, 190, (4, 4, 3)).astype(np.float32)
    image = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    for _ in range(rng.integers(3, 9)):  # grey distractors: strokes and blobs of no class
        grey = float(rng.uniform(30, 230))
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        if rng.random() < 0.5:
            cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), (grey, grey, grey),
                     int(rng.integers(1, 4)))
        else:
            axes = (int(rng.integers(3, size // 8)), int(rng.integers(3, size // 8)))
            cv2.ellipse(image, tuple(int(v) for v in p1), axes, float(rng.uniform(0, 180)), 0, 360, (grey,) * 3, -1)
    return np.clip(image, 0, 255)


def render_scene(rng: np.random.Generator, size: int, num_classes: int,
                 max_objects: int = 4) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One scene: ``(uint8 RGB image, [{category_index, bbox [x,y,w,h], area}])`` of visible objects.

    1–3 classes are present, with ``len(present)``–``max_objects`` objects in all (each present
    class at least once; a larger ``max_objects`` gives several instances per class).
    """
    image = _background(size, rng)
    present = rng.choice(num_classes, size=min(num_classes, int(rng.integers(1, 4))), replace=False)
    count = int(rng.integers(len(present), max(max_objects, len(present)) + 1))
    kinds = list(present) + list(rng.choice(present, count - len(present)))
    visible_of: list[tuple[int, np.ndarray]] = []
    for k in kinds:
        cls = CLASSES[int(k)]
        r = rng.uniform(0.06, 0.3) * size
        cx, cy = rng.uniform(r * 0.3, size - r * 0.3, 2)
        mask = _mask(cls.shape, size, cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
        image[mask] = _texture(cls.texture, cls.color, size, rng)[mask]
        visible_of = [(j, m & ~mask) for j, m in visible_of]  # later objects occlude earlier ones
        visible_of.append((int(k), mask))
    objects = []
    for k, mask in visible_of:
        area = int(mask.sum())
        if area < MIN_VISIBLE:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        objects.append({"category_index": k, "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                        "area": area})
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8), objects


def categories(num_classes: int) -> list[dict[str, Any]]:
    """COCO ``categories`` of the first ``num_classes`` synthetic classes (ids 1..K)."""
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"--classes must be between 1 and {len(CLASSES)}, got {num_classes}")
    return [{"id": k + 1, "name": c.name, "supercategory": "shape"} for k, c in enumerate(CLASSES[:num_classes])]


def generate_split(out: Path, split: str, count: int, num_classes: int, size: int, seed: int,
                   max_objects: int = 4) -> dict[str, Any]:
    """Write ``count`` scenes to ``out/split/`` and return their COCO instances dict."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, objects = render_scene(np.random.default_rng([seed, SPLITS[split], i]), size, num_classes,
                                      max_objects)
        image_id = i + 1
        name = f"{split}_{image_id:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise OSError(f"could not encode {name}")
        (folder / name).write_bytes(encoded.tobytes())
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_index"] + 1, "bbox": obj["bbox"], "area": obj["area"],
                                "iscrowd": 0})
    return {"info": {"description": f"camloc synthetic shapes, seed {seed}", "version": "1"},
            "images": images, "annotations": annotations, "categories": categories(num_classes)}


def generate(out: str | Path, train: int, val: int, num_classes: int = 6, size: int = 160, seed: int = 0,
             max_objects: int = 4) -> Path:
    """Generate both splits under ``out``; returns ``out``. Same arguments, same bytes."""
    out = Path(out)
    if size < 32:
        raise ValueError(f"--size must be at least 32, got {size}")
    if not 1 <= max_objects <= 32:
        raise ValueError(f"--max-objects must be between 1 and 32, got {max_objects}")
    categories(num_classes)
    for split, count in (("train", train), ("val", val)):
        if count > 0:
            data = generate_split(out, split, count, num_classes, size, seed, max_objects)
            atomic_write_json(out / "annotations" / f"instances_{split}.json", data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camloc.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", type=int, default=1000, help="number of training images")
    parser.add_argument("--val", type=int, default=200, help="number of validation images")
    parser.add_argument("--classes", type=int, default=6, help=f"number of classes (1..{len(CLASSES)})")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=4,
                        help="objects per scene at most (more than 3 gives several instances per class)")
    args = parser.parse_args(argv)
    try:
        generate(args.out, args.train, args.val, args.classes, args.size, args.seed, args.max_objects)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    print(f"wrote {args.train} train and {args.val} val images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
