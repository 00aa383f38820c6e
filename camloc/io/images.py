"""Safe image loading: any source and PIL mode in, an EXIF-upright 8-bit RGB ``PIL.Image`` out.

:func:`load_image` is camloc's one image boundary (the app, both CLIs, the datasets and the
Localizer call it). Every failure is an :class:`ImageError` (a ``ValueError``) whose one-line
message names the input, what is wrong and what to do: a missing or unreadable path, a file that
is not a raster image, a decoder error of any kind, data that ends early, a decompression bomb, an
empty image, an array of the wrong shape, type or range. Only raster formats are opened (never
PostScript/PDF interpreters), and nothing here lets a decompression bomb allocate its pixels.
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels (width × height): 64 MP covers any camera; a 20000×20000
#: PNG (400 MP, 1.2 GB decoded) is refused before its pixels are decoded.
MAX_IMAGE_PIXELS = 64_000_000

ImageSource = Union[str, Path, bytes, "np.ndarray", Image.Image]

Image.init()
#: The formats :func:`load_image` opens (those of them this Pillow build has).
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "DIB", "TIFF", "ICO", "JPEG2000", "PPM",
                            "TGA") if f in Image.OPEN)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class ImageError(ValueError):
    """An input that is not a usable image; the message says why and what to do."""


def _check_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}×{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: image is {width}×{height} = {width * height:,} pixels, over the "
                         f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale it first")


def _readable_path(path: Path, name: str) -> Path:
    try:
        if path.is_file():
            return path
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # name too long, NUL byte, symlink loop, ...
        raise ImageError(f"{name}: cannot use this path ({exc.__class__.__name__}: {exc}); check it") from None
    if is_dir:
        raise ImageError(f"{name}: is a folder, not an image file")
    if exists:
        raise ImageError(f"{name}: not a regular file (a pipe or device?); save the image as a file")
    raise ImageError(f"{name}: no such image file; check the path")


def _png_short_by(stream: BinaryIO) -> tuple[int, int] | None:
    """``(bytes inflated, bytes the header promises)`` when a PNG's image data is a *complete*
    zlib stream that ends before the last row (Pillow fills the missing rows with black); else None."""
    stream.seek(16)  # signature, IHDR's length and type
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", stream.read(13))
    bits = _PNG_CHANNELS[colour] * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        cols, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
        expected += rows * (1 + (cols * bits + 7) // 8) if cols else 0
    inflate, produced = zlib.decompressobj(), 0
    stream.seek(4, io.SEEK_CUR)  # IHDR's CRC
    while produced < expected and len(head := stream.read(8)) == 8 and inflate.eof is False:
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            break
        if kind != b"IDAT":
            stream.seek(length + 4, io.SEEK_CUR)
            continue
        data = stream.read(length)
        while data and produced < expected:
            produced += len(inflate.decompress(data, 1 << 20))
            data = inflate.unconsumed_tail
        stream.seek(4, io.SEEK_CUR)
    return (produced, expected) if produced < expected else None


@contextlib.contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn whatever opening or decoding an image raises into an :class:`ImageError` naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged metadata; errors raise
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (decompression bomb?); "
                         f"the limit is {MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file ({', '.join(FORMATS)} expected)") from None
    except PermissionError as exc:
        raise ImageError(f"{name}: cannot read the file ({exc.strerror}); check its permissions") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image; downscale it first") from None
    except Exception as exc:  # Pillow's decoders fail with any exception type
        detail = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise ImageError(f"{name}: image data is corrupt or truncated ({detail}); re-export the file") from None


def _load_pixels(image: Image.Image, name: str) -> Image.Image:
    """Decode an opened (lazy) image, inside :func:`_decoding`: the size is checked before any pixel is
    decoded, and a PNG's data stream is checked for an early end (Pillow would fill the missing rows
    with black) on the image's own file object — the same checks whether the image came as a path,
    as bytes or as a ``PIL.Image`` the caller opened. An image already decoded has no stream left."""
    _check_size(*image.size, name)
    stream = getattr(image, "fp", None)
    if image.format == "PNG" and stream is not None:
        position = stream.tell()
        try:
            short = _png_short_by(stream)
        finally:
            stream.seek(position)
        if short:
            raise ImageError(f"{name}: PNG image data ends early ({short[0]:,} of {short[1]:,} bytes); "
                             "the file is damaged, re-export it")
    image.load()
    return image


def _decode(source: Path | bytes, name: str) -> Image.Image:
    """Open and fully decode a file or encoded bytes; any failure becomes an :class:`ImageError`."""
    with _decoding(name):
        image = Image.open(source if isinstance(source, Path) else io.BytesIO(source), formats=FORMATS)
        return _load_pixels(image, name)


def _float_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Floats in [0, 1] → ``uint8(floor(255·v + 0.5))``; NaN, inf or other ranges are refused."""
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError(f"{name}: float pixel values include NaN or inf; replace them first")
    if low < 0 or high > 1:
        raise ImageError(f"{name}: float pixel values must be in [0, 1], these span [{low:.4g}, {high:.4g}]; "
                         "divide by 255 (or by the maximum) or pass uint8")
    return (values.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Any PIL mode → 8-bit RGB: 16/32-bit greyscale is rescaled, floats must be in [0, 1], alpha
    is composited on white, CIELab goes through an sRGB colour transform."""
    if image.mode.startswith("I;16"):
        grey = np.clip(np.asarray(image, dtype=np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(f"{name}: 32-bit integer pixels span [{values.min()}, {values.max()}], outside "
                             "0..65535; save the image with 8 or 16 bits per channel")
        top = 65535.0 if values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image), name)).convert("RGB")
    if image.mode == "LAB":
        return ImageCms.applyTransform(image, _lab_to_srgb())
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("LA" if image.mode == "La" else image.mode).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: array of shape {array.shape} is not an image (H×W, H×W×3 or H×W×4 expected)")
    _check_size(array.shape[1], array.shape[0], name)
    if array.dtype.kind == "f":
        array = _float_to_uint8(array, name)
    elif array.dtype != np.uint8:
        raise ImageError(f"{name}: array dtype {array.dtype} not supported (uint8, or float in [0, 1])")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)), name)


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Return ``source`` as an upright (EXIF-rotated) 8-bit RGB PIL image, or raise :class:`ImageError`.

    ``source`` is a path, the encoded bytes of a file (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF, ICO,
    JPEG 2000, PPM, TGA), a PIL image (decoded here if it was opened lazily) or an ``H×W[×C]``
    array (uint8, or float in [0, 1]). The image must have 1 to :data:`MAX_IMAGE_PIXELS` pixels.
    ``name`` labels error messages (default: the path, or "image").
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, np.ndarray):
        return _from_array(source, label)
    if isinstance(source, Image.Image):
        with _decoding(label):  # a lazily opened image decodes here
            image = _load_pixels(source, label)
    elif isinstance(source, (str, Path)):
        image = _decode(_readable_path(Path(source), label), label)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode(bytes(source), label)
    else:
        raise ImageError(f"{label}: cannot read an image from a {type(source).__name__}")
    with contextlib.suppress(Exception):  # a broken EXIF block must not make the image unusable
        image = ImageOps.exif_transpose(image) or image
    try:
        return _to_rgb(image, label)
    except ImageError:
        raise
    except Exception as exc:  # an unusual mode Pillow cannot convert
        raise ImageError(f"{label}: cannot convert a {image.mode} image to RGB ({exc}); "
                         "save it as 8-bit RGB") from None
