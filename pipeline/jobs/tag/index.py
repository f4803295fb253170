"""The tag index ``OUT.index/``: committed parts (rows as JSON, embeddings as .npz) listed by a manifest that is
replaced atomically, so a kill leaves the old manifest or the new one. A sharded run (torchrun) has one such index
per rank, ``OUT.index/rank-R-of-N/``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

INDEX_VERSION = 2  # 2: the model is stored as an identity dict (model_spec.model_identity)


class Index:
    """``OUT.index/``: manifest.json listing committed parts; each part a JSON file of rows and an .npz of embeddings."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest_path = folder / "manifest.json"

    def load(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.manifest_path}: unreadable tag index ({e}); delete the folder to start over") \
                from None
        if manifest.get("version") != INDEX_VERSION:
            raise ValueError(f"{self.manifest_path}: index version {manifest.get('version')} is not {INDEX_VERSION}")
        return manifest

    def create(self, settings: dict) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"version": INDEX_VERSION, "settings": settings, "parts": []}
        self._write_manifest(manifest)
        return manifest

    def clean_orphans(self, manifest: dict) -> None:
        """Delete part files a kill left behind without listing them."""
        listed = {p["name"] for p in manifest["parts"]}
        for f in self.folder.iterdir():
            if f.name.startswith("part-") and f.name.split(".")[0] not in listed:
                f.unlink()

    def commit(self, manifest: dict, rows: dict, video_emb: np.ndarray, window_emb: np.ndarray) -> None:
        name = f"part-{len(manifest['parts']):06d}"
        rows_tmp, emb_tmp = self.folder / f"{name}.json.tmp", self.folder / f"{name}.npz.tmp"
        rows_tmp.write_text(json.dumps(rows))
        with open(emb_tmp, "wb") as f:
            np.savez(f, videos=video_emb, windows=window_emb)
        for tmp in (rows_tmp, emb_tmp):
            _fsync(tmp)
            tmp.replace(tmp.with_name(tmp.name[: -len(".tmp")]))
        stamps = {r["path"]: r["stamp"] for r in rows["videos"] + rows["errors"]}
        manifest["parts"].append({"name": name, "stamps": stamps})
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_name("manifest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.manifest_path)

    def done(self, manifest: dict) -> dict[str, list[int]]:
        """Path -> the (size, mtime) it was tagged at, newest part winning."""
        out: dict[str, list[int]] = {}
        for part in manifest["parts"]:
            out.update(part["stamps"])
        return out

    def read(self, manifest: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """All rows (one set per video: the newest part's) with embedding row numbers rebased, and the embeddings."""
        owner = {}
        for part in manifest["parts"]:
            for path in part["stamps"]:
                owner[path] = part["name"]
        rows: dict[str, list[dict]] = {"videos": [], "windows": [], "errors": []}
        videos, windows = [], []
        nv = nw = 0
        for part in manifest["parts"]:
            data = json.loads((self.folder / f"{part['name']}.json").read_text())
            emb = np.load(self.folder / f"{part['name']}.npz")
            for kind in rows:
                for r in data[kind]:
                    if owner.get(r["path"]) == part["name"]:
                        r = dict(r)
                        if kind == "videos":
                            r["emb"] += nv
                        elif kind == "windows":
                            r["emb"] += nw
                        rows[kind].append(r)
            videos.append(emb["videos"])
            windows.append(emb["windows"])
            nv, nw = nv + len(emb["videos"]), nw + len(emb["windows"])
        return rows, _concat(videos), _concat(windows)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Row-stack embedding blocks; parts that hold only errors have none."""
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def index_folder(out: Path) -> Path:
    return out.with_name(out.name + ".index")




def read_indexes(folder: Path) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """The settings and all rows and embeddings of a tag index: one folder, or the rank-* folders of a sharded run
    (each resumable on its own), concatenated in rank order."""
    single = Index(folder)
    indexes = [single] if single.manifest_path.exists() else [
        Index(f) for f in sorted(folder.glob("rank-*")) if (f / "manifest.json").exists()]
    if not indexes:
        raise ValueError(f"{folder}: not a tag index (no manifest.json); pass the OUT.index folder tag wrote")
    rows: dict[str, list[dict]] = {"videos": [], "windows": [], "errors": []}
    videos, windows, settings = [], [], None
    for index in indexes:
        manifest = index.load()
        settings = {k: v for k, v in manifest["settings"].items() if k != "shard"}
        part_rows, v, w = index.read(manifest)
        offsets = {"videos": sum(len(x) for x in videos), "windows": sum(len(x) for x in windows)}
        for kind in rows:
            for r in part_rows[kind]:
                if kind in offsets:
                    r["emb"] += offsets[kind]
                rows[kind].append(r)
        videos.append(v)
        windows.append(w)
    return settings, rows, _concat(videos), _concat(windows)
