"""Shared pieces of the fuzz suite (``tests/test_fuzz_*.py``): deterministic Hypothesis settings,
the one-line-error contract, and generators of corrupt files.

Every fuzz case asserts the contract of its boundary: either the boundary's own error class with a
one-line message, or an accepted input with a sane result. Nothing is random from run to run:
Hypothesis runs derandomized with no example database, and byte-level corruption uses fixed seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from PIL import Image, features

from camloc.synthetic import generate_split
from tests.helpers import gradient_image

#: The settings of every Hypothesis test in the fuzz suite: same examples on every run, no database.
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


def fuzz(max_examples: int) -> settings:
    """:data:`FUZZ` with ``max_examples`` examples."""
    return settings(FUZZ, max_examples=max_examples)


def assert_one_line(error: BaseException) -> str:
    """The message of a user-facing error: one non-empty line."""
    message = str(error)
    assert message.strip() and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# ----------------------------------------------------------------------------------------------
# encoded images
# ----------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_bytes(rgb: np.ndarray, interlaced: bool = False, keep_rows: int | None = None) -> bytes:
    """An 8-bit RGB PNG written by hand (PIL cannot write Adam7), optionally with a *complete* zlib
    stream that holds only the first ``keep_rows`` scanlines (rows of the passes, if interlaced)."""
    height, width = rgb.shape[:2]
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    rows = [b"\x00" + row.tobytes() for x0, y0, dx, dy in passes for row in rgb[y0::dy, x0::dx]
            if rgb[y0::dy, x0::dx].shape[1]]
    raw = b"".join(rows[:keep_rows])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_files() -> dict[str, bytes]:
    """One small noisy picture in every format the decoders support here (name → encoded bytes)."""
    rgb = gradient_image(40, 56, seed=3)
    image = Image.fromarray(rgb)
    files = {
        "jpeg": _encode(image, "JPEG", quality=90),
        "jpeg-progressive": _encode(image, "JPEG", quality=90, progressive=True),
        "jpeg-cmyk": _encode(image.convert("CMYK"), "JPEG", quality=90),
        "png": _encode(image, "PNG"),
        "png-interlaced": png_bytes(rgb, interlaced=True),
        "png-rgba": _encode(image.convert("RGBA"), "PNG"),
        "png-palette": _encode(image.convert("P"), "PNG"),
        "png-16bit": _encode(Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257), "PNG"),
        "gif": _encode(image, "GIF"),
        "bmp": _encode(image, "BMP"),
        "tiff": _encode(image, "TIFF"),
        "tiff-lzw": _encode(image, "TIFF", compression="tiff_lzw"),
        "tiff-float": _encode(Image.fromarray(np.asarray(image.convert("L"), np.float32) / 255), "TIFF"),
        "ico": _encode(image, "ICO", sizes=[(32, 32)]),
        "ppm": _encode(image, "PPM"),
        "tga": _encode(image, "TGA"),
    }
    if features.check("webp"):
        files["webp"] = _encode(image, "WEBP", quality=80)
        files["webp-lossless"] = _encode(image, "WEBP", lossless=True)
    if features.check("jpg_2000"):
        files["jpeg2000"] = _encode(image, "JPEG2000")
        files["jpeg2000-j2k"] = _encode(image, "JPEG2000", no_jp2=True)
    return files


def flip_bytes(data: bytes, seed: int, count: int, window: int | None = None) -> bytes:
    """``data`` with ``count`` bytes (in the first ``window`` bytes, default all) replaced, seeded."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for _ in range(count):
        out[int(rng.integers(min(window or len(out), len(out))))] = int(rng.integers(256))
    return bytes(out)


def scene_data(root: Path, count: int, seed: int) -> dict:
    """``count`` 64-px synthetic scenes of the demo checkpoint's six categories in ``root``: the images folder, the
    annotations (``ann``) and their file (``ann_path``)."""
    ann = generate_split(root, "val", count, 6, 64, seed=seed)
    (root / "ann.json").write_text(json.dumps(ann))
    return {"root": root, "images": root / "val", "ann": ann, "ann_path": root / "ann.json"}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads: many tiny networks on a busy machine are far faster on
    one thread than with OpenMP threads spinning against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
