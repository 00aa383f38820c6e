"""Loader-side reading and device-side decoding of a split's images (camloc.io.reader), on the CPU."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from camloc.io.images import load_image
from camloc.io.preprocess import pixels_of
from camloc.io.reader import SplitImages, collate, decode_batch, orient
from tests.conftest import VAL_IMAGES
from tests.helpers import gradient_image


def save(path, array, fmt="JPEG", **options):
    Image.fromarray(array).save(path, format=fmt, **options)
    return {"file_name": path.name}


@pytest.fixture
def folder(tmp_path):
    """One image per case: EXIF orientations 1–8, greyscale, CMYK, PNG, truncated, not an image, missing."""
    array = gradient_image(37, 53)
    entries = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        entries.append(save(tmp_path / f"o{orientation}.jpg", array, exif=exif.tobytes(), quality=92))
    entries.append(save(tmp_path / "grey.jpg", array[..., 0]))
    Image.fromarray(array).convert("CMYK").save(tmp_path / "cmyk.jpg")
    entries.append({"file_name": "cmyk.jpg"})
    entries.append(save(tmp_path / "plain.png", array, fmt="PNG"))
    whole = (tmp_path / "o1.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    entries += [{"file_name": "cut.jpg"}, {"file_name": "text.jpg"}, {"file_name": "gone.jpg"}]
    for i, entry in enumerate(entries):
        entry["id"] = 100 + i
    return tmp_path, entries


@pytest.mark.parametrize("device_decode", [False, True])
def test_every_readable_image_has_load_images_pixels_and_the_rest_their_reason(folder, device_decode):
    path, entries = folder
    dataset = SplitImages(path, entries, device_decode=device_decode)
    items = [dataset[i] for i in range(len(dataset))]
    encoded = {item.name.rsplit("/", 1)[-1] for item in items if item.encoded is not None}
    assert encoded == ({f"o{i}.jpg" for i in range(1, 9)} | {"grey.jpg"} if device_decode else set())
    readable, unreadable = decode_batch(collate(items), "cpu")
    assert [i for i, _ in readable] == [e["id"] for e in entries[:11]]
    for (_, pixels), entry in zip(readable, entries):
        expected = pixels_of(load_image(path / entry["file_name"]))
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, expected), entry["file_name"]  # bit for bit
    reasons = dict(unreadable)
    assert set(reasons) == {e["id"] for e in entries[11:]}
    assert all(str(path) in reason for reason in reasons.values())
    assert "truncated" in reasons[entries[11]["id"]] or "corrupt" in reasons[entries[11]["id"]]
    assert "not an image file" in reasons[entries[12]["id"]]
    assert items[-1].stamp == (-1, -1) and items[0].stamp[0] == (path / "o1.jpg").stat().st_size


def test_a_jpeg_the_device_decoder_refuses_is_decoded_by_load_image_or_listed(folder, monkeypatch):
    """A batch the device decoder rejects is retried image by image; one it still rejects goes to load_image."""
    import camloc.io.reader as reader

    path, entries = folder
    calls = []

    def picky(data, mode, device):
        calls.append(len(data) if isinstance(data, list) else 1)
        if isinstance(data, list) or data.numel() % 2:  # the batch, and odd-sized files, "fail on the device"
            raise RuntimeError("nvjpeg: unsupported")
        return torch.ops.image.decode_jpeg(data, mode.value, False)

    monkeypatch.setattr(reader, "decode_jpeg", picky)
    dataset = SplitImages(path, entries[:9], device_decode=True)
    readable, unreadable = decode_batch(collate([dataset[i] for i in range(9)]), "cpu")
    assert calls[0] == 9 and len(calls) == 10 and not unreadable
    for (_, pixels), entry in zip(readable, entries):
        assert torch.equal(pixels, pixels_of(load_image(path / entry["file_name"])))


def test_orientations_match_pils_exif_transpose():
    array = gradient_image(5, 7)
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", exif=exif.tobytes())
        assert torch.equal(orient(pixels, orientation), pixels_of(load_image(buffer.getvalue()))), orientation


@pytest.mark.realdata
def test_real_jpegs_decode_on_the_device_path_to_the_same_pixels():
    names = sorted(p.name for p in VAL_IMAGES.glob("*.jpg"))[:12]
    dataset = SplitImages(VAL_IMAGES, [{"id": i, "file_name": n} for i, n in enumerate(names)], device_decode=True)
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item.encoded is not None for item in items)
    readable, _ = decode_batch(collate(items), "cpu")
    assert all(torch.equal(px, pixels_of(load_image(VAL_IMAGES / n))) for (_, px), n in zip(readable, names))
    assert np.mean([px.shape[-1] for _, px in readable]) > 300
