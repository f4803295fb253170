"""Looking after a tag index: ``verify_index`` checks every file its committed versions read against the SHA-256
recorded when it was committed (and each table's row count); ``repair_index`` rebuilds a lost state.json from the
tables themselves."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clip_model.errors import UserError

from .index import TagIndex
from .index_state import SETTINGS_KEY, IndexState, differing, import_lance, version_files, writer_lock


@dataclass(frozen=True)
class Verification:
    folder: Path
    files: int  # files checked against their checksums
    bytes: int
    damaged: list[str]  # files missing or differing, relative to the folder
    unchecked: int  # files a table's committed version reads that no checksum covers (written before checksums)
    problems: list[str]  # tables that do not open, or whose row counts differ from the committed ones

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    def line(self) -> str:
        if self.ok:
            extra = f"; {self.unchecked} files written before checksums not checked" if self.unchecked else ""
            return f"{self.folder}: ok ({self.files} files, {self.bytes / 1e6:.1f} MB checked{extra})"
        return f"{self.folder}: damaged: " + "; ".join(self.damaged + self.problems)


VERIFY_TRIES = 3  # a live writer that commits (and compacts away what was being checked) makes verify start over


def verify_index(folder: Path) -> Verification:
    """Check every recorded file's SHA-256, and that each table opens at its committed version with its committed
    row count. Where something is missing or differs while a writer has committed since (its compaction deletes
    superseded files), the check starts over on the new state: only damage that stays is reported."""
    folder = Path(folder)
    for _ in range(VERIFY_TRIES):
        state = IndexState.read(folder)
        report = _verify(folder, state)
        if report.ok or IndexState.read(folder).versions == state.versions:
            return report
    return report


def _verify(folder: Path, state: IndexState) -> Verification:
    damaged = differing(folder, state.files)
    problems, unchecked = [], 0
    lance = import_lance()
    for name in TagIndex.TABLES:
        version = state.versions.get(name, 0)
        if not version:
            continue
        try:
            ds = lance.dataset(str(folder / f"{name}.lance"), version=version)
            rows = ds.count_rows()
            referenced = set(version_files(name, ds))
        except (OSError, ValueError) as e:
            problems.append(f"table {name} does not open at version {version} ({str(e).splitlines()[0][:200]})")
            continue
        unchecked += len(referenced - set(state.files))
        if name in state.rows and rows != state.rows[name]:
            problems.append(f"table {name} has {rows} rows, {state.rows[name]} were committed")
    return Verification(folder, len(state.files), sum(size for size, _ in state.files.values()), damaged, unchecked,
                        problems)


def repair_index(folder: Path) -> IndexState:
    """Rebuild a lost state.json from the tables: the newest versions of the two that agree (every tagged video has
    its video embedding and every embedding its video), and the settings kept in their schema metadata."""
    folder = Path(folder)
    lock = writer_lock(folder)
    try:
        if (folder / "state.json").exists():
            raise UserError(f"{folder}: state.json is there; nothing to repair (run_pipeline.py verify checks it)")
        lance = import_lance()
        paths = {name: folder / f"{name}.lance" for name in TagIndex.TABLES}
        if not all(p.is_dir() for p in paths.values()):
            raise UserError(f"{folder}: no tables to rebuild state.json from (need videos.lance and embeddings.lance);"
                             " tag again with --restart")
        latest = {name: lance.dataset(str(p)) for name, p in paths.items()}
        meta = latest["embeddings"].schema.metadata or {}
        if SETTINGS_KEY not in meta:
            raise UserError(f"{folder}: its tables do not record their settings (written before repair was possible);"
                             " tag again with --restart")
        recorded = json.loads(meta[SETTINGS_KEY])
        candidates = {name: sorted((v["version"] for v in ds.versions()), reverse=True)[:6]
                      for name, ds in latest.items()}
        for v in candidates["videos"]:
            videos = lance.dataset(str(paths["videos"]), version=v)
            ok = set(videos.to_table(columns=["video_id"], filter="status = 'ok'").column(0).to_pylist())
            every = set(videos.to_table(columns=["video_id"]).column(0).to_pylist())
            for e in candidates["embeddings"]:
                emb = lance.dataset(str(paths["embeddings"]), version=e)
                ids = set(emb.to_table(columns=["video_id"], filter="kind = 'video'").column(0).to_pylist())
                if ids == ok and set(emb.to_table(columns=["video_id"]).column(0).to_pylist()) <= every:
                    rank, world = recorded["settings"].get("shard", [0, 1])
                    next_id = max(((i - rank) // world for i in every), default=-1) + 1
                    state = IndexState(recorded["settings"], recorded["dim"], {"videos": v, "embeddings": e},
                                       next_video_id=next_id)
                    state.write(folder)
                    index = TagIndex(folder, state, write=True, lock=lock)
                    index._record()  # checksums of the files as they are now, and the row counts
                    lock = None  # closed with the index
                    index.close()
                    return index.state
        raise UserError(f"{folder}: no versions of the two tables agree; tag again with --restart")
    finally:
        if lock is not None:
            lock.close()
