"""Convert a tag index of the first format (``manifest.json`` listing parts of JSON rows and ``.npz`` embeddings) into
the Lance index, once: ``run_pipeline.py migrate-index OUT.index``.

Every committed part is read in order, one at a time, and each path keeps the rows of the newest part that holds it,
as the old reader did. Rows are committed to a new index beside the old one (``OUT.index.migrating``); only when it
is complete is the old folder moved aside and the new one renamed into its place, so a kill leaves the old index
untouched and a rerun starts the conversion over. Embeddings become float16; the labels each video and window had
at tagging time (which the old format did not keep) are scored with the index's own model, labels and templates.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from clip_model.errors import UserError
from clip_model.names import RANDOM_PREFIX
from pipeline.video.supervisor import Failure

from .index import TagIndex
from .outputs import top_labels
from .part import Part, next_video_id, video_row
from .query import index_model
from .table_indexes import build_indexes

OLD_VERSION = 1


def old_identity(key: str) -> dict:
    """The first format's model key (``spec|precision`` or ``path|name:size:mtime,...|precision``) as the identity
    dict ``loading.model_identity`` gives today, so a resume after migration matches."""
    parts = key.split("|")
    if len(parts) == 2:
        return {"spec": parts[0], "precision": parts[1]}
    if len(parts) == 3 and not parts[0].startswith(RANDOM_PREFIX):
        files = [[name, int(size), int(mtime)] for name, size, mtime in
                 (item.rsplit(":", 2) for item in parts[1].split(",") if item)]
        return {"spec": parts[0], "precision": parts[2], "files": files}
    raise UserError(f"unrecognised model key {key!r} in an old tag index")


def migrate_index(folder: str | Path, device: str = "auto") -> list[Path]:
    """Convert the old-format index in ``folder`` (or each rank-* index of a sharded run); returns the folders."""
    folder = Path(folder).expanduser()
    if (folder / "manifest.json").exists():
        return [_migrate_one(folder, device)]
    ranks = sorted(f for f in folder.glob("rank-*") if (f / "manifest.json").exists())
    if not ranks:
        raise UserError(f"{folder}: no old-format tag index here (no manifest.json); nothing to migrate")
    return [_migrate_one(f, device) for f in ranks]


def _migrate_one(folder: Path, device: str) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("version") != OLD_VERSION:
        raise UserError(f"{folder / 'manifest.json'}: index version {manifest.get('version')} is not the old "
                         f"format ({OLD_VERSION}); nothing to migrate")
    settings = dict(manifest["settings"]) | {"model": old_identity(manifest["settings"]["model"])}
    model = index_model(settings, device)
    scorer = top_labels(model, settings["labels"], settings["templates"], settings["topk"])
    shard = settings.get("shard", [0, 1])
    rank, world = int(shard[0]), int(shard[1])
    owner = {path: part["name"] for part in manifest["parts"] for path in part["stamps"]}  # newest part wins
    new = folder.with_name(folder.name + ".migrating")
    shutil.rmtree(new, ignore_errors=True)
    index = TagIndex.create(new, settings, model.embed_dim)
    for part_info in manifest["parts"]:
        part = Part(scorer, model.embed_dim)
        rows = json.loads((folder / f"{part_info['name']}.json").read_text())
        emb = np.load(folder / f"{part_info['name']}.npz")
        windows: dict[str, list[dict]] = {}
        for w in rows["windows"]:
            windows.setdefault(w["path"], []).append(w)

        for r in rows["videos"]:
            if owner.get(r["path"]) != part_info["name"]:
                continue
            wins = sorted(windows.get(r["path"], []), key=lambda w: w["window"])
            vecs = np.concatenate([emb["videos"][r["emb"]][None], emb["windows"][[w["emb"] for w in wins]]])
            row = video_row(next_video_id(index, part, rank, world), r["path"], _stamp(r["stamp"]), "ok") | {
                k: r[k] for k in ("duration_s", "decoder", "windows", "warnings")}
            part.add(row, vecs.astype(np.float32), [(w["start_s"], w["end_s"]) for w in wins])
        for r in rows["errors"]:
            if owner.get(r["path"]) == part_info["name"]:
                part.add_failure(next_video_id(index, part, rank, world), r["path"], _stamp(r["stamp"]),
                                 Failure(r["status"], r["stage"], r["reason"]))
        if len(part):
            index.commit(*part.tables())
    build_indexes(index)
    index.close()
    old = folder.with_name(folder.name + ".old-format")
    shutil.rmtree(old, ignore_errors=True)
    folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old)
    return folder


def _stamp(stamp: list | None) -> tuple[int, int] | None:
    return (int(stamp[0]), int(stamp[1])) if stamp else None
