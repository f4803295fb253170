"""Downloads against a loopback HTTP server: SHA256 verified, atomic, nothing left behind on failure."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest
import torch

import clip_model
from clip_model import CheckpointError, download
from helpers import open_clip_model, ours_from_open_clip


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_caches(server, tmp_path):
    root, base = server
    (root / "w.bin").write_bytes(b"weights" * 1000)
    dest = tmp_path / "cache" / "w.bin"
    out = download.download(f"{base}/w.bin", _sha(b"weights" * 1000), dest, progress=False)
    assert out == dest and dest.read_bytes() == b"weights" * 1000
    (root / "w.bin").unlink()  # a cache hit must not touch the network
    assert download.download(f"{base}/w.bin", _sha(b"weights" * 1000), dest, progress=False) == dest


def test_wrong_sha256_is_rejected_and_nothing_is_left(server, tmp_path):
    root, base = server
    (root / "w.bin").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="does not match the published"):
        download.download(f"{base}/w.bin", _sha(b"original"), cache / "w.bin", progress=False)
    assert list(cache.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot download .*put the file at .*w\.bin \(sha256 ab\)") as e:
        download.download("http://127.0.0.1:9/w.bin", "ab", tmp_path / "w.bin", progress=False, timeout=5)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_offline_env_never_touches_network(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_VIDEO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="CLIP_VIDEO_OFFLINE=1: put the file at"):
        download.download("http://127.0.0.1:9/w.bin", "ab", tmp_path / "w.bin", progress=False)


def test_load_by_name_downloads_into_cache_env(server, tmp_path, monkeypatch):
    """clip_model.load('ViT-B/32') resolves through the cache dir env var and the published table."""
    root, base = server
    oc = open_clip_model("tiny")
    ours = ours_from_open_clip(oc)
    torch.save(ours.state_dict(), root / "ViT-B-32.pt")
    sha = download.sha256_of(root / "ViT-B-32.pt")
    table = {"ViT-B/32": {"url": f"{base}/{sha}/ViT-B-32.pt", "sha256": sha}}
    (root / sha).mkdir()
    (root / "ViT-B-32.pt").rename(root / sha / "ViT-B-32.pt")
    monkeypatch.setattr(download, "published_models", lambda: table)
    monkeypatch.setattr(clip_model, "published_models", lambda: table)
    monkeypatch.setenv("CLIP_VIDEO_CACHE", str(tmp_path / "cache"))
    model, _ = clip_model.load("ViT-B/32")
    assert (tmp_path / "cache" / "ViT-B-32.pt").is_file()
    tokens = clip_model.tokenize(["a dog"])
    assert torch.allclose(model.encode_text(tokens), ours.encode_text(tokens))


def test_published_table_is_complete():
    models = clip_model.available_models()
    assert models == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    for name, entry in download.published_models().items():
        assert entry["url"].split("/")[-2] == entry["sha256"] and len(entry["sha256"]) == 64, name
        assert name in clip_model.MODEL_CONFIGS
