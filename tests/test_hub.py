"""Hub ids against a loopback server that answers as the Hugging Face hub does: LFS files behind a redirect that
states their SHA256 (X-Linked-Etag), small JSON files served directly. Downloads are verified, cached, atomic."""
from __future__ import annotations

import hashlib
import http.server
import math
import shutil
import threading
from pathlib import Path

import pytest
import torch
from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

import clip_model
from clip_model import CheckpointError
from clip_model.hub import HUB_MODELS, hub_folder

REPO = "google/siglip-base-patch16-224"
LFS = {"model.safetensors", "spiece.model"}


class Hub:
    def __init__(self, files: dict[str, bytes]):
        self.files, self.sha = files, {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
        self.requests: list[str] = []


def _handler(hub: Hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, data: bytes = b"", body: bool = True, **headers: str) -> None:
            self.send_response(status)
            for name, value in (headers | {"Content-Length": str(len(data))}).items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _route(self, body: bool) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            prefix = f"/{REPO}/resolve/main/"
            if self.path.startswith("/cdn/"):
                return self._send(200, hub.files[self.path[len("/cdn/"):]], body)
            name = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if name not in hub.files:
                return self._send(404)
            if name in LFS:  # the hub: a redirect to the CDN, stating the file's SHA256
                return self._send(302, Location=f"/cdn/{name}", X_Linked_Etag=f'"{hub.sha[name]}"')
            return self._send(200, hub.files[name], body)

        def do_HEAD(self):
            self._route(body=False)

        def do_GET(self):
            self._route(body=True)

    return Handler


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    import sentencepiece as spm

    torch.manual_seed(0)
    hf = SiglipModel(SiglipConfig(
        text_config=dict(vocab_size=60, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8))).eval()
    with torch.no_grad():
        hf.logit_scale.fill_(math.log(10.0))
    repo = tmp_path / "repo"
    hf.save_pretrained(repo)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(repo)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a photo of a cat", "riding a bike"] * 20),
                                   model_prefix=str(tmp_path / "sp"), vocab_size=60, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    shutil.copy(tmp_path / "sp.model", repo / "spiece.model")
    state = Hub({p.name: p.read_bytes() for p in repo.iterdir() if p.is_file()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("CLIP_VIDEO_HUB", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("CLIP_VIDEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLIP_VIDEO_OFFLINE", raising=False)
    yield hf, state, tmp_path / "cache"
    httpd.shutdown()
    httpd.server_close()


def test_a_hub_id_downloads_verifies_and_caches_the_repository(hub):
    hf, state, cache = hub
    model, transform = clip_model.load(REPO)
    folder = cache / "hub" / REPO.replace("/", "--")
    assert sorted(p.name for p in folder.iterdir()) == sorted(state.files)  # nothing else (no .part left)
    assert isinstance(model, clip_model.SigLIP) and model.tokenizer is not None
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model.encode_image(images) - hf.get_image_features(pixel_values=images)).abs().max() < 1e-4
    heads = sorted(r for r in state.requests if r.startswith("HEAD"))
    assert heads == sorted(f"HEAD /{REPO}/resolve/main/{n}" for n in state.files)
    state.requests.clear()
    clip_model.load(REPO)  # cached: the hub is not asked again
    assert state.requests == []


def test_a_file_that_does_not_match_its_stated_sha256_is_not_kept(hub):
    _, state, cache = hub
    state.files["model.safetensors"] = state.files["model.safetensors"][:-10] + b"0" * 10  # the CDN serves other bytes
    with pytest.raises(CheckpointError, match="does not match the published"):
        clip_model.load(REPO)
    folder = cache / "hub" / REPO.replace("/", "--")
    assert not (folder / "model.safetensors").exists() and not list(folder.glob("*.part"))


def test_offline_says_which_files_to_put_where(hub, monkeypatch):
    _, state, cache = hub
    monkeypatch.setenv("CLIP_VIDEO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="CLIP_VIDEO_OFFLINE=1: put the repository's config.json in .*hub"):
        hub_folder(REPO)
    assert state.requests == []


def test_the_table_names_every_file_a_family_needs():
    for repo, entry in HUB_MODELS.items():
        names = {n for alternatives in entry.files for n in alternatives}
        assert {"config.json", "preprocessor_config.json"} <= names, repo
        assert names & {"model.safetensors", "pytorch_model.bin"}, repo
        if entry.family == "siglip":
            assert names & {"spiece.model", "tokenizer.model"} and entry.frames is None, repo
        else:  # the frame count the repository's name says (the zero-shot model was trained on 32)
            frames = 32 if repo.endswith("zero-shot") else 16 if repo.endswith("16-frames") else 8
            assert entry.frames == frames, repo
    with pytest.raises(CheckpointError, match="unknown hub model"):
        hub_folder("someone/else")


@pytest.mark.slow
def test_classify_takes_a_hub_id(hub, tmp_path):
    import json
    import subprocess
    import sys

    from datasets.synthetic import moving_square_frames, write_video

    video = write_video(tmp_path / "v.mp4", moving_square_frames("moving left", "red", num_frames=16))
    (tmp_path / "labels.txt").write_text("a cat\nriding a bike\na photo\n")
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, str(root / "run_pipeline.py"), "classify", str(video), "--model", REPO,
                          "--labels", str(tmp_path / "labels.txt"), "--templates", "none", "--format", "json",
                          "--device", "cpu", "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert sorted(row["labels"]) == ["a cat", "a photo", "riding a bike"] and all(0 < s < 1 for s in row["scores"])
