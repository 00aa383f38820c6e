import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from camloc.io.images import ImageError, load_image
from tests.helpers import gradient_image, image_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height 1-bit pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * 64)) + chunk(b"IEND", b"")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(path)


def test_truncated_jpeg():
    data = image_bytes(gradient_image(200, 300), "JPEG", quality=95)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError, match=r"too large|pixel limit"):
        load_image(png_header_only(20000, 20000))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(ImageError, match="cannot read an image"):
        load_image(3.14)
    with pytest.raises(ImageError, match="not an image"):
        load_image(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "L", "LA", "P", "I;16", "1"])
def test_every_mode_becomes_8bit_rgb(mode, tmp_path):
    rgb = Image.fromarray(gradient_image(40, 50))
    if mode == "I;16":
        source = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
        assert source.mode.startswith("I;16")
    else:
        source = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    source.save(path, format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (50, 40)
    if mode in ("L", "I;16"):  # 16-bit greyscale is rescaled, not clipped to white
        grey = np.asarray(rgb.convert("L"), np.int16)
        assert np.abs(np.asarray(out, np.int16)[..., 0] - grey).max() <= 1


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    out = np.asarray(load_image(image_bytes(rgba)))
    assert out[0, 0].tolist() == [200, 0, 0] and out[3, 3].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = image_bytes(gradient_image(30, 60), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (30, 60)


def test_arrays_uint8_and_float():
    array = gradient_image(10, 12)
    assert np.array_equal(np.asarray(load_image(array)), array)
    assert np.asarray(load_image(np.ones((3, 5), np.float32))).min() == 255
