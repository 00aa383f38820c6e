"""Fuzz: hostile images at the image boundary (:func:`camloc.io.images.load_image`).

Contract: an :class:`ImageError` with a one-line message, or an 8-bit RGB image of 1 to
``MAX_IMAGE_PIXELS`` pixels whose pixels are what the input holds — never another exception, and
never a damaged file decoded into different pixels.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from camloc.io.images import MAX_IMAGE_PIXELS, ImageError, load_image
from tests.fuzz_support import assert_one_line, flip_bytes, fuzz, png_bytes, png_chunk, sample_files
from tests.helpers import gradient_image

FILES = sample_files()
FORMATS = sorted(FILES)
CUTS = (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97)


def load_or_refuse(source, name: str | None = None) -> Image.Image | None:
    """Apply the contract; return the image, or None when it was refused with a clear ImageError."""
    try:
        image = load_image(source, name)
    except ImageError as exc:
        assert_one_line(exc)
        return None
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    width, height = image.size
    assert width >= 1 and height >= 1 and width * height <= MAX_IMAGE_PIXELS
    assert np.asarray(image).shape == (height, width, 3)
    return image


def decoded(data: bytes) -> np.ndarray:
    image = load_image(data)
    return np.asarray(image)


# ----------------------------------------------------------------------------------------------
# damaged files
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_is_refused_or_loses_nothing(fmt, cut):
    """A file cut short is an ImageError, unless every pixel still decodes exactly as the intact file."""
    data = FILES[fmt]
    image = load_or_refuse(data[: int(len(data) * cut)])
    if image is not None:
        assert np.array_equal(np.asarray(image), decoded(data)), f"truncated {fmt} decoded to other pixels"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_header_is_refused_or_decodes_sanely(fmt, seed):
    load_or_refuse(flip_bytes(FILES[fmt], seed, count=3, window=64))


@fuzz(150)
@given(fmt=st.sampled_from(FORMATS), edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)),
                                                   min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_mutated_bytes_are_refused_or_decode_sanely(fmt, edits, cut):
    data = bytearray(FILES[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    load_or_refuse(bytes(data if cut is None else data[: int(len(data) * cut)]))


def bmp_with(width: int = 4, height: int = 4, bits: int = 24, offset: int = 54, compression: int = 0,
             pixels: bytes | None = None) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, 0, 2835, 2835, 0, 0)
    data = pixels if pixels is not None else b"\x80" * (((abs(width) * 3 + 3) // 4) * 4 * abs(height))
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(data), 0, 0, offset) + info + data


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + png_chunk(b"IEND", b""))


RGB = gradient_image(24, 20, seed=5)
CRAFTED = {
    "empty": b"",
    "text": b"this is not a picture",
    "html": b"<!DOCTYPE html><html><body>404</body></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "pdf": b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "png-0x0": png_header(0, 0),
    "png-5x0": png_header(5, 0),
    "png-bomb": png_header(30000, 30000),
    "png-rows-missing": png_bytes(RGB, keep_rows=9),
    "png-interlaced-rows-missing": png_bytes(RGB, interlaced=True, keep_rows=20),
    "png-no-idat": b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    + png_chunk(b"IEND", b""),
    "png-signature-only": b"\x89PNG\r\n\x1a\n",
    "bmp-bits-0": bmp_with(bits=0),
    "bmp-bits-7": bmp_with(bits=7),
    "bmp-width-0": bmp_with(width=0),
    "bmp-height-0": bmp_with(height=0),
    "bmp-negative-width": bmp_with(width=-4),
    "bmp-offset-past-end": bmp_with(offset=10**6),
    "bmp-compression-9": bmp_with(compression=9),
    "bmp-no-pixels": bmp_with(pixels=b""),
    "bmp-huge": bmp_with(width=60000, height=60000, pixels=b""),
    "jpeg2000-no-data": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 ",
    "j2k-no-data": b"\xff\x4f\xff\x51\x00\x29" + b"\x00" * 10,
    "gif-zero-screen": b"GIF89a\x00\x00\x00\x00\x00\x00\x00;",
    "gif-header-only": b"GIF89a\x10\x00\x10\x00\x80\x00\x00",
    "gif-bomb": b"GIF89a\xff\xff\xff\xff\x00\x00\x00" + b",\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;",
    "ico-entry-past-end": b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00\x00\x01\x00\x00\xff\xff\x00\x00",
    "ico-no-entries": b"\x00\x00\x01\x00\x00\x00",
    "ico-truncated-directory": b"\x00\x00\x01\x00\x05\x00\x10\x10",
    "tiff-header-only": b"II*\x00\x08\x00\x00\x00\x00\x00",
    "tiff-bad-ifd": b"II*\x00\xff\xff\xff\x7f",
    "jpeg-soi-only": b"\xff\xd8",
    "jpeg-soi-eoi": b"\xff\xd8\xff\xd9",
    "jpeg-bomb": b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9",
    "webp-header-only": b"RIFF\x1a\x00\x00\x00WEBPVP8 \x0e\x00\x00\x00",
    "ppm-header-only": b"P6\n4 4\n255\n",
    "ppm-negative": b"P6\n-4 4\n255\n" + b"\x00" * 48,
    "ppm-maxval-0": b"P6\n2 2\n0\n" + b"\x00" * 12,
}


def lazily_opened(source: Path | bytes) -> Image.Image | None:
    """``Image.open`` of a file or of bytes (pixels decoded on first use), or None where PIL cannot open it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on damaged metadata
            return Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Exception:  # PIL refusing to open it is not what is tested here
        return None


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_bad_file_is_refused(name, tmp_path):
    """Each of these is broken, a bomb, or not a raster image: refused from bytes, from a file, and as a
    ``PIL.Image`` opened lazily from either (a PNG whose rows stop early came back black that way)."""
    assert load_or_refuse(CRAFTED[name]) is None, f"{name} was accepted"
    path = tmp_path / f"{name}.img"
    path.write_bytes(CRAFTED[name])
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(path) in assert_one_line(error.value)
    for source in (CRAFTED[name], path):
        image = lazily_opened(source)
        assert image is None or load_or_refuse(image) is None, f"{name} opened lazily from {type(source)} was accepted"


def unreadable_paths(tmp_path: Path) -> dict[str, object]:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    return {"missing": tmp_path / "absent.jpg", "folder": folder, "fifo": fifo,
            "name-too-long": tmp_path / ("x" * 300 + ".jpg"), "path-too-long": "/".join(["d" * 200] * 30),
            "nul-byte": str(tmp_path / "a\0b.jpg"), "empty-string": "", "unreadable-proc-file": "/proc/self/mem",
            "symlink-loop": _loop(tmp_path)}


def _loop(tmp_path: Path) -> Path:
    link = tmp_path / "loop.jpg"
    link.symlink_to(link)
    return link


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "name-too-long", "path-too-long", "nul-byte",
                                  "empty-string", "unreadable-proc-file", "symlink-loop"])
def test_unreadable_path_is_refused(kind, tmp_path):
    assert load_or_refuse(unreadable_paths(tmp_path)[kind]) is None


# ----------------------------------------------------------------------------------------------
# PIL images and arrays passed in
# ----------------------------------------------------------------------------------------------

MODES = ["1", "CMYK", "F", "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "L", "LA", "La", "LAB", "P", "PA", "RGB",
         "RGBA", "RGBa", "RGBX", "YCbCr"]


@pytest.mark.parametrize("size", [(0, 0), (5, 0), (0, 5), (1, 1), (9, 7)])
@pytest.mark.parametrize("mode", MODES)
def test_pil_image_of_any_mode_and_size(mode, size):
    """Empty images are refused; any mode of a real size becomes RGB of the same size."""
    image = load_or_refuse(Image.new(mode, size))
    if 0 in size:
        assert image is None, f"a {size[0]}×{size[1]} image was accepted"
    else:
        assert image is not None and image.size == size, f"mode {mode} was refused"


def test_pil_image_over_the_pixel_limit_is_refused():
    assert load_or_refuse(Image.new("1", (9000, 9000))) is None


@pytest.mark.parametrize("fmt", ["jpeg", "jpeg-progressive", "png", "png-rgba", "bmp", "gif", "tiff"])
def test_lazily_opened_damaged_pil_image_is_refused(fmt):
    data = FILES[fmt]
    image = Image.open(io.BytesIO(data[: len(data) // 2]))  # PIL reads pixels on first use
    assert load_or_refuse(image) is None


def expected_pixels(array: np.ndarray) -> np.ndarray | None:
    """What the array contract says an array becomes: None where it must be refused."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape[:2]:
        return None
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        return None
    if array.dtype == np.uint8:
        values = array
    elif array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
                return None
        values = np.floor(array.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    else:
        return None
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=2)
    if values.shape[2] == 4:  # alpha-composited on white: checked for opaque pixels only
        return values
    return values


DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]


@fuzz(150)
@given(hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_array_is_refused_or_becomes_exactly_its_pixels(array):
    expected = expected_pixels(array)
    image = load_or_refuse(array)
    if expected is None:
        assert image is None, f"{array.dtype} array of shape {array.shape} was accepted"
        return
    assert image is not None, f"valid {array.dtype} array of shape {array.shape} was refused"
    got = np.asarray(image)
    if expected.shape[2] == 4:
        opaque = expected[..., 3] == 255
        assert np.array_equal(got[opaque], expected[opaque][:, :3])
    else:
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("array", [np.array([[0.5, np.nan]]), np.array([[0.5, np.inf]]), np.array([[0.0, 255.0]]),
                                   np.array([[-0.5, 0.5]]), np.array([[1, 2]], dtype=object),
                                   np.broadcast_to(np.uint8(0), (9000, 9000)), np.zeros((0, 4, 3), np.uint8),
                                   np.zeros((4, 4, 2), np.uint8)], ids=["nan", "inf", "float-0-255", "negative",
                                                                       "object", "bomb", "empty", "two-channels"])
def test_bad_array_is_refused(array):
    assert load_or_refuse(array) is None


def test_float_tiff_in_0_1_loads_like_the_same_float_array():
    values = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    assert np.array_equal(np.asarray(load_image(buffer.getvalue())), np.asarray(load_image(values)))


def test_la_and_lab_images_are_converted():
    la = Image.new("LA", (4, 3), (200, 255)).convert("La")
    assert np.asarray(load_image(la))[0, 0].tolist() == [200, 200, 200]
    lab = Image.new("LAB", (4, 3), (255, 128, 128))  # L = 100, a = b = 0: white
    assert np.asarray(load_image(lab)).min() >= 250
