"""Safe image loading: any source and PIL mode in, an EXIF-upright 8-bit RGB ``PIL.Image`` out.

Every failure is a :class:`ImageError` (a ``ValueError``) whose one-line message names the problem
and what to do; nothing here lets a decompression bomb allocate its pixels.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels (width × height): 64 MP covers any camera; a 20000×20000
#: PNG (400 MP, 1.2 GB decoded) is refused before its pixels are decoded.
MAX_IMAGE_PIXELS = 64_000_000

ImageSource = Union[str, Path, bytes, "np.ndarray", Image.Image]


class ImageError(ValueError):
    """An input that is not a usable image; the message says why and what to do."""


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such image file; check the path")
        stream: io.IOBase | Path = path
    else:
        stream = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: image is too large (decompression bomb?); "
                             f"the limit is {MAX_IMAGE_PIXELS:,} pixels") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file (JPEG, PNG, WebP, BMP, TIFF ... expected)") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: image is {width}×{height} = {width * height:,} pixels, over the "
                         f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale it first")
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}×{height})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: image data is corrupt or truncated ({exc}); re-export the file") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: 16/32-bit greyscale is rescaled, alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: array of shape {array.shape} is not an image (H×W, H×W×3 or H×W×4 expected)")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: array image is over the {MAX_IMAGE_PIXELS:,}-pixel limit; downscale it first")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageError(f"{name}: array dtype {array.dtype} not supported (uint8 or float in [0, 1])")
        array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Return ``source`` as an upright (EXIF-rotated) 8-bit RGB PIL image.

    ``source`` is a path, the encoded bytes of a file, a PIL image or an ``H×W[×C]`` array
    (uint8, or float in [0, 1]). ``name`` labels error messages (default: the path or "image").
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, np.ndarray):
        return _from_array(source, label)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        image = _open(bytes(source) if not isinstance(source, (str, Path)) else source, label)
    else:
        raise ImageError(f"{label}: cannot read an image from a {type(source).__name__}")
    with contextlib.suppress(Exception):  # a broken EXIF block must not make the image unusable
        image = ImageOps.exif_transpose(image) or image
    return _to_rgb(image)
