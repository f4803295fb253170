"""Resolve published model names to a verified local file, downloading once into a cache.

The cache is ``$CLIP_VIDEO_CACHE`` if set, else ``$XDG_CACHE_HOME/clip_video`` (default ``~/.cache/clip_video``).
Downloads stream into a temporary file beside the target while hashing, and only a file whose SHA256 matches the
published one is renamed into place: an interrupted or corrupted download never leaves a file under the final name.
Set ``CLIP_VIDEO_OFFLINE=1`` to never touch the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from .errors import CheckpointError

MODELS_FILE = Path(__file__).with_name("openai_models.json")  # from openai/CLIP clip/clip.py (MIT License)
CHUNK = 1 << 20


@lru_cache
def published_models() -> dict[str, dict[str, str]]:
    """name -> {"url", "sha256"} for OpenAI's nine published checkpoints."""
    return json.loads(MODELS_FILE.read_text())


def cache_dir() -> Path:
    if os.environ.get("CLIP_VIDEO_CACHE"):
        return Path(os.environ["CLIP_VIDEO_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "clip_video"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, sha256: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right SHA256 is already there; verify before renaming.
    ``sha256`` may be the leading hex digits a publisher states (OpenMMLab's file names carry the first 8)."""
    if dest.is_file() and sha256_of(dest).startswith(sha256):
        return dest
    if os.environ.get("CLIP_VIDEO_OFFLINE") == "1":
        raise CheckpointError(f"{dest.name} is not cached and CLIP_VIDEO_OFFLINE=1: put the file at {dest} (sha256 {sha256})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if not sha256 or not h.hexdigest().startswith(sha256):
            raise CheckpointError(f"{url}: SHA256 {h.hexdigest()} does not match the published {sha256}; nothing was saved")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"cannot download {url} ({reason}); put the file at {dest} (sha256 {sha256}) to use it offline"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def model_path(name: str, root: Path | None = None, *, progress: bool = True) -> Path:
    """Local path of a published model, downloading it into the cache on a miss."""
    models = published_models()
    if name not in models:
        raise CheckpointError(f"unknown model name {name!r}; available: {', '.join(models)}")
    entry = models[name]
    dest = (root or cache_dir()) / entry["url"].rsplit("/", 1)[-1]
    return download(entry["url"], entry["sha256"], dest, progress=progress)
