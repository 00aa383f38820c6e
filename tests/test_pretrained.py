"""torchvision ImageNet weights: download with progress and hash check, offline behaviour, ImageNet→COCO model.
A local file server stands in for download.pytorch.org (no network in tests)."""

import functools
import hashlib
import http.server
import threading

import pytest
import torch

from camloc.models import ModelError, build_torchvision, pretrained
from camloc.models.classes import COCO_NAMES
from camloc.models.imagenet_coco import coco_groups
from camloc.models.pretrained import PretrainedWeights


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields the base URL. The torch hub cache goes to tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def publish(folder, arch: str, payload: bytes, digest: bytes | None = None) -> str:
    """Put ``payload`` on the server under a torch-hub name (``arch-<sha256 prefix>.pth``) of ``digest``'s hash."""
    name = f"{arch}-{hashlib.sha256(digest or payload).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(payload)
    return name


def test_weights_come_from_torchvisions_api_into_its_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = pretrained.imagenet_weights("resnet50")
    assert weights.file_name == "resnet50-11ad3fa6.pth" and weights.url.startswith("https://download.pytorch.org/")
    assert weights.path == tmp_path / "hub" / "checkpoints" / weights.file_name and not weights.is_cached()
    assert str(tmp_path / "hub" / "checkpoints") in pretrained.manual_hint(weights)
    with pytest.raises(ModelError, match="no pretrained weights"):
        pretrained.imagenet_weights("not_a_model")


def test_download_reports_progress_checks_the_hash_and_caches(served):
    base, folder = served
    payload = bytes(range(256)) * 10_000  # 2.5 MB: three chunks
    weights = PretrainedWeights("mobilenet_v2", f"{base}/{publish(folder, 'mobilenet_v2', payload)}")
    seen = []
    assert pretrained.is_online(weights.url)
    assert pretrained.download(weights, lambda done, total: seen.append((done, total))) == weights.path
    assert weights.path.read_bytes() == payload
    assert [d for d, _ in seen] == [2**20, 2**21, len(payload)] and {t for _, t in seen} == {len(payload)}


def test_a_corrupt_or_failed_download_leaves_nothing_and_says_what_to_do(served):
    base, folder = served
    corrupt = PretrainedWeights("resnet50", f"{base}/{publish(folder, 'resnet50', b'tampered', digest=b'original')}")
    with pytest.raises(ModelError, match=r"corrupt.*SHA-256") as error:
        pretrained.download(corrupt)
    assert f"download {corrupt.file_name} ({corrupt.url}) into {corrupt.folder}" in str(error.value)
    assert not corrupt.is_cached() and not list(corrupt.folder.glob("*"))  # no partial file either
    missing = PretrainedWeights("resnet50", f"{base}/resnet50-00000000.pth")
    with pytest.raises(ModelError, match=r"could not download .*HTTPError"):
        pretrained.download(missing)
    closed = PretrainedWeights("resnet50", "http://127.0.0.1:9/resnet50-00000000.pth")
    assert not pretrained.is_online(closed.url)
    with pytest.raises(ModelError, match="could not download"):
        pretrained.download(closed)


def test_offline_switch(served, monkeypatch):
    base, _ = served
    assert pretrained.is_online(base)
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    assert not pretrained.is_online(base)


def test_a_downloaded_imagenet_model_becomes_a_coco_model(served):
    base, folder = served
    net = build_torchvision("mobilenet_v2", 1000).eval()
    torch.save(net.state_dict(), folder / "tmp.pth")
    name = publish(folder, "mobilenet_v2", (folder / "tmp.pth").read_bytes())
    weights = PretrainedWeights("mobilenet_v2", f"{base}/{name}")
    with pytest.raises(ModelError, match="not downloaded"):
        pretrained.load_imagenet_coco(weights)
    pretrained.download(weights)
    model, meta = pretrained.load_imagenet_coco(weights)
    assert meta["class_names"] == list(COCO_NAMES) and "person" in meta["unsupported_classes"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        imagenet = torch.softmax(net(x), -1)
        coco = torch.exp(model(x)[0])
    dog = COCO_NAMES.index("dog")  # p(dog) = ImageNet's probability mass on its dog breeds
    assert coco[0, dog].item() == pytest.approx(imagenet[0, coco_groups(1000)[dog]].sum().item(), rel=1e-4)
    weights.path.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="delete it and download again"):
        pretrained.load_imagenet_coco(weights)
