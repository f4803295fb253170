"""Hugging Face hub ids for the families beyond OpenAI's CLIP: resolved to the repository's files, downloaded once into
the cache, each large file checked against the SHA256 the hub states for it.

    clip_model.load("google/siglip-base-patch16-224")  ->  <cache>/hub/google--siglip-base-patch16-224/{config.json,
                                                             model.safetensors, preprocessor_config.json, spiece.model}

Only the ids in ``HUB_MODELS`` resolve (a pinned table: what each is, and which files make it). For a file stored in
Git LFS (weights, tokenizer models) the hub answers ``HEAD .../resolve/main/FILE`` with a redirect that carries the
file's SHA256 (``X-Linked-Etag``); the download is verified against it (``download.download``: a temporary file,
renamed into place only when it matches). Small JSON files are not in LFS and have no SHA256 on the hub: they are
size-capped and only ever parsed as JSON. ``$CLIP_VIDEO_HUB`` replaces the endpoint (a mirror; the tests' loopback
server); ``CLIP_VIDEO_OFFLINE=1`` never touches the network and says which files to put where.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .download import cache_dir, download
from .errors import CheckpointError

MAX_SMALL_FILE = 10 << 20  # config and preprocessor JSON


@dataclass(frozen=True)
class HubModel:
    family: str  # siglip | xclip (its protocol: pipeline.model.families)
    image_size: int
    frames: int | None  # fixed by the checkpoint (X-CLIP), or None: any
    files: tuple[tuple[str, ...], ...]  # each entry: the names it may have, first found wins


_SIGLIP = (("config.json",), ("model.safetensors",), ("preprocessor_config.json",))
_XCLIP = (("config.json",), ("model.safetensors", "pytorch_model.bin"), ("preprocessor_config.json",))
HUB_MODELS = {
    "google/siglip-base-patch16-224": HubModel("siglip", 224, None, (*_SIGLIP, ("spiece.model",))),
    "google/siglip2-base-patch16-224": HubModel("siglip", 224, None, (*_SIGLIP, ("tokenizer.model",))),
    "microsoft/xclip-base-patch32": HubModel("xclip", 224, 8, _XCLIP),
    "microsoft/xclip-base-patch32-16-frames": HubModel("xclip", 224, 16, _XCLIP),
    "microsoft/xclip-base-patch16": HubModel("xclip", 224, 8, _XCLIP),
    "microsoft/xclip-base-patch16-16-frames": HubModel("xclip", 224, 16, _XCLIP),
    "microsoft/xclip-base-patch16-zero-shot": HubModel("xclip", 224, 32, _XCLIP),  # the paper's zero-shot model
}


def endpoint() -> str:
    return os.environ.get("CLIP_VIDEO_HUB", "https://huggingface.co").rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect's own headers carry the LFS file's SHA256


def _head(url: str, timeout: float) -> tuple[int, dict[str, str]]:
    """(status, headers) of HEAD ``url`` without following a redirect; 404 when the file does not exist."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as e:  # 3xx (not followed) and 4xx arrive here
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def hub_folder(repo: str, root: Path | None = None, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """The local folder of hub model ``repo`` (an id of ``HUB_MODELS``), downloading what is missing."""
    if repo not in HUB_MODELS:
        raise CheckpointError(f"unknown hub model {repo!r}; known: {', '.join(HUB_MODELS)}")
    folder = (root or cache_dir()) / "hub" / repo.replace("/", "--")
    for names in HUB_MODELS[repo].files:
        if any((folder / name).is_file() for name in names):
            continue
        if os.environ.get("CLIP_VIDEO_OFFLINE") == "1":
            raise CheckpointError(f"{repo}: {names[0]} is not cached and CLIP_VIDEO_OFFLINE=1: put the repository's "
                                  f"{' or '.join(names)} in {folder}")
        _fetch(repo, names, folder, progress, timeout)
    return folder


def _fetch(repo: str, names: tuple[str, ...], folder: Path, progress: bool, timeout: float) -> None:
    for name in names:
        url = f"{endpoint()}/{repo}/resolve/main/{name}"
        try:
            status, headers = _head(url, timeout)
        except (urllib.error.URLError, OSError) as e:
            raise CheckpointError(f"cannot reach {url} ({getattr(e, 'reason', e)}); put the repository's files in "
                                  f"{folder} to use it offline") from None
        if status == 404:
            continue  # another name of the same file may exist
        sha256 = headers.get("x-linked-etag", "").strip('"')
        if 300 <= status < 400 and len(sha256) == 64:  # Git LFS: the redirect states the SHA256
            download(url, sha256, folder / name, progress=progress, timeout=timeout)
            return
        if status == 200 and name.endswith(".json"):
            _small(url, folder / name, timeout)
            return
        raise CheckpointError(f"{url}: the hub states no SHA256 for this file (HTTP {status}); not downloaded")
    raise CheckpointError(f"{repo}: none of {', '.join(names)} on {endpoint()}")


def _small(url: str, dest: Path, timeout: float) -> None:
    """A small JSON file (config, preprocessor): size-capped; written under a temporary name, then renamed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read(MAX_SMALL_FILE + 1)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(f"cannot download {url} ({getattr(e, 'reason', e)})") from None
    if len(data) > MAX_SMALL_FILE:
        raise CheckpointError(f"{url}: larger than {MAX_SMALL_FILE >> 20} MB, not a config file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
