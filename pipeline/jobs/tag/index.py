"""The tag index ``OUT.index/``: two Lance tables, changed only by atomic commits, read by streaming.

    OUT.index/
      state.json          format, settings, each table's committed version, the next video id (``index_state``)
      videos.lance/       one row per tagged path (its stamp, status, failure, top labels, poster)
      embeddings.lance/   one row per video and per window: a float16 unit vector (the columns: ``index_state``)
Lance (``pylance``): atomic appends as versions, reads at any committed version, vector indexes, streamed batches.

Exactly once. A writer takes ``writer.lock`` before it writes anything (a second writer is refused). A commit deletes
the rows of paths being tagged again, appends to both tables (each change its own Lance version), then replaces
state.json (written, fsynced, renamed) with both tables' new versions. A writer that opens the index first restores
each table to the version state.json names, so a kill at any moment loses at most the commit under way; readers read
the named versions only. A folder whose state.json is lost is refused, never wiped: ``repair_index`` rebuilds it from
the tables (the settings are also kept in each table's schema metadata), or ``tag --restart`` starts over.

Integrity. Lance keeps no checksums of its data pages: each file a commit adds is hashed (SHA-256) into state.json
with its size, beside each table's row count; ``verify_index`` checks them, a failed read names the file.
Compaction. Every ``COMPACT_EVERY`` commits small fragments are merged and versions older than ``KEEP_VERSIONS`` s
deleted, so neither fragments nor versions grow with the archive; a reader on a recent version keeps reading it, one
whose version is gone reopens the latest committed one. A sharded run (torchrun) writes one such index per rank,
``OUT.index/rank-R-of-N/``; readers open them all.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from clip_model.errors import UserError

from .index_state import (
    SETTINGS_KEY,
    TABLES,
    IndexDamaged,
    IndexState,
    checksums,
    differing,
    file_name,
    import_lance,
    is_lance_error,
    sql_string,
    stored_name,
    version_files,
    writer_lock,
)

COMPACT_EVERY = 64  # commits between compactions
KEEP_VERSIONS = 120.0  # seconds: compaction keeps the versions committed this recently (readers may hold them)
REOPEN_TRIES = 3  # a reader reopens at most this often in a row when a writer's compaction took its version away
FRAGMENT_ROWS = 65_536  # compaction target: ~64 MB of 512-d float16 vectors per fragment
SCAN_BATCH = 16_384  # rows per streamed batch
READAHEAD = 1  # batches (and fragments) a scan reads ahead: a scan holds a few batches, not fragments
IO_BUFFER = 64 << 20  # bytes of reads in flight per scan (Lance defaults to 2 GiB)
VECTOR_INDEX = "vector_idx"
# A query probes NPROBES IVF partitions and re-ranks REFINE x k rows exactly: PQ's ranking is coarse (recall@10 at
# 10^6 videos: 0.795 from 10 x k, 1.0 from 30 x k, bench_index.py); 50 x k also lifts uniform random vectors
NPROBES = 20
REFINE = 50

T = TypeVar("T")


class TagIndex:
    """One index folder. ``open(folder, write=True)`` restores uncommitted changes away; readers see committed rows."""

    TABLES = TABLES

    def __init__(self, folder: Path, state: IndexState, write: bool, lock: Any = None):
        """``write`` needs ``lock`` (``writer_lock(folder)``, taken before the state was read) or takes it now."""
        self.folder, self.state, self.writable = folder, state, write
        self.lance = import_lance()
        self._lock = (lock or writer_lock(folder)) if write else None
        self._tables: dict[str, Any] = {}
        self._indexed: tuple[int | None] | None = None  # (rows the vector index covers, or None), once read
        self._reopen_lock = threading.Lock()  # serve reads from a thread pool: one reopen at a time
        try:
            self._tables = self._opened(state)
        except BaseException:
            self.close()
            raise

    def _opened(self, state: IndexState) -> dict[str, Any]:
        """The tables at ``state``'s versions (a writer first undoes a commit killed half way)."""
        tables: dict[str, Any] = {}
        for name in self.TABLES:
            version = state.versions.get(name, 0)
            if self.writable and not version and (self.folder / f"{name}.lance").exists():
                shutil.rmtree(self.folder / f"{name}.lance")  # this writer's first commit, killed before it counted
            if version:
                path = str(self.folder / f"{name}.lance")
                ds: Any = self._guarded(name, lambda p=path, v=version: self.lance.dataset(p, version=v))  # type: ignore[misc]
                if self.writable and ds.latest_version != version:  # a commit was killed half way: undo its changes
                    ds.restore()
                    ds = self.lance.dataset(str(self.folder / f"{name}.lance"))
                tables[name] = ds
        return tables

    def close(self) -> None:
        """Release the writer's lock (also released when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.writable = False

    @classmethod
    def create(cls, folder: Path, settings: dict, dim: int, lock: Any = None) -> TagIndex:
        folder.mkdir(parents=True, exist_ok=True)
        lock = lock or writer_lock(folder)
        state = IndexState(settings, dim, {name: 0 for name in cls.TABLES})
        try:
            state.write(folder)
        except BaseException:
            lock.close()
            raise
        return cls(folder, state, write=True, lock=lock)

    @classmethod
    def open(cls, folder: Path, write: bool = False) -> TagIndex:
        if not write:  # a writer may compact away the versions just read from state.json: read it again then
            for _ in range(REOPEN_TRIES - 1):
                state = IndexState.read(folder)
                try:
                    return cls(folder, state, write)
                except IndexDamaged:
                    if IndexState.read(folder).versions == state.versions:
                        raise
            return cls(folder, IndexState.read(folder), write)
        lock = writer_lock(folder)  # before the state is read: what it says stays true while this writer runs
        try:
            state = IndexState.read(folder)
        except BaseException:
            lock.close()
            raise
        return cls(folder, state, True, lock)

    @classmethod
    def open_writer(cls, folder: Path, settings: dict, dim: int, restart: bool = False) -> TagIndex:
        """The index in ``folder`` to write, created if the folder holds none; ``restart`` discards what it holds.
        The lock comes first, so two writers racing to create it cannot overwrite each other's state."""
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder}: is a file, not a tag index folder; remove it or use another --out")
        folder.mkdir(parents=True, exist_ok=True)
        lock = writer_lock(folder)
        try:
            if restart:  # state first: a crash half way leaves tables without a state, which --restart clears again
                (folder / "state.json").unlink(missing_ok=True)
                for name in cls.TABLES:
                    shutil.rmtree(folder / f"{name}.lance", ignore_errors=True)
            if not (folder / "state.json").exists() and not (folder / "manifest.json").exists() and not any(
                    (folder / f"{name}.lance").exists() for name in cls.TABLES):
                return cls.create(folder, settings, dim, lock)
            return cls(folder, IndexState.read(folder), True, lock)
        except BaseException:
            lock.close()
            raise

    # ---- damage and versions gone -----------------------------------------------------------------------------

    def _guarded(self, table: str, read: Callable[[], T]) -> T:
        """``read()`` of ``table``; Lance's errors become ``IndexDamaged`` naming the file (``_read`` retries once on
        the latest versions first, for a reader whose version a writer's compaction took away)."""
        try:
            return read()
        except (OSError, ValueError) as e:
            if isinstance(e, IndexDamaged) or not is_lance_error(e):
                raise
            raise self._damage(table, str(e)) from None

    def _damage(self, table: str, message: str) -> IndexDamaged:
        bad = [f for f in differing(self.folder, self.state.files, sizes_only=True) if f.startswith(f"{table}.lance/")]
        if not bad:
            found = re.search(rf"{re.escape(table)}\.lance/((?:data|_deletions|_indices|_versions)/[^\s,:]+)", message)
            bad = [f"{table}.lance/{found.group(1)}"] if found else differing(self.folder, self.state.files)
        file = bad[0].split("/", 1)[1] if bad else "unknown: " + message.splitlines()[0][:200]
        return IndexDamaged(self.folder, table, file)

    def _reopened(self, seen: dict[str, int] | None = None) -> bool:
        """Reopen at the versions state.json names now, if they differ from ``seen`` (default: those open); returns
        whether the tables are now newer than ``seen`` (another thread may have reopened them meanwhile). The open
        tables are replaced only by a complete new set: a concurrent reader never sees some or none."""
        with self._reopen_lock:
            seen = self.state.versions if seen is None else seen
            if self.state.versions != seen:
                return True
            failed = None
            for _ in range(REOPEN_TRIES):
                try:
                    state = IndexState.read(self.folder)
                except ValueError:
                    break
                if state.versions == seen:
                    break
                try:
                    tables = self._opened(state)
                except IndexDamaged as e:  # compacted away again while it was being opened: try the newer state
                    seen, failed = state.versions, e
                    continue
                self.state, self._tables, self._indexed = state, tables, None
                return True
            if failed is not None:
                raise failed
            return False

    def _read(self, table: str, read: Callable[[], T]) -> T:
        """A read that, if its version was deleted by a writer's compaction, is retried once on the latest."""
        seen = self.state.versions
        try:
            return self._guarded(table, read)
        except IndexDamaged:
            if not self.writable and self._reopened(seen):
                return self._guarded(table, read)
            raise

    # ---- reading --------------------------------------------------------------------------------------------------

    def table(self, name: str) -> Any | None:
        return self._tables.get(name)

    def count(self, name: str, where: str | None = None) -> int:
        return self._read(name, lambda: self._tables[name].count_rows(filter=where) if name in self._tables else 0)

    def token_count(self) -> int:
        """K, the X-CLIP tokens each embedding row holds (0: none)."""
        ds = self.table("embeddings")
        if ds is None or "tokens" not in ds.schema.names:
            return 0
        return ds.schema.field("tokens").type.list_size // self.state.dim

    def stamps(self) -> dict[str, tuple[int | None, int | None]]:
        """Path -> (size, mtime_ns) it was tagged at, for every stored path (tagged or failed)."""
        return {file_name(path): (size, mtime) for batch in self.scan("videos", ["path", "size", "mtime_ns"])
                for path, size, mtime in zip(*(column.to_pylist() for column in batch.columns))}

    def paths(self, where: str) -> set[str]:
        """The stored paths whose video row matches ``where`` (SQL), as file names."""
        return {file_name(path) for batch in self.scan("videos", ["path"], where=where)
                for path in batch.column(0).to_pylist()}

    def video_ids(self, where: str) -> set[int]:
        """The ids of the stored videos whose row matches ``where`` (SQL)."""
        return {i for batch in self.scan("videos", ["video_id"], where=where) for i in batch.column(0).to_pylist()}

    def scan(self, name: str, columns: Sequence[str] | None = None, where: str | None = None,
             batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """The committed rows of a table in the order they were committed, as record batches of ``SCAN_BATCH``. A
        scan whose version is compacted away before its first batch restarts on the latest; one cut later raises
        ``IndexDamaged`` (a reader that must see every row, like the output writer, starts again)."""
        def batches() -> Iterator[pa.RecordBatch]:
            ds = self.table(name)
            if ds is None:
                return iter(())
            return iter(ds.to_batches(columns=list(columns) if columns else None, filter=where,
                                      batch_size=batch_rows or SCAN_BATCH, scan_in_order=True,
                                      batch_readahead=READAHEAD, fragment_readahead=READAHEAD,
                                      io_buffer_size=IO_BUFFER))

        stream: Iterator[pa.RecordBatch] = iter(())

        def start() -> pa.RecordBatch | None:
            nonlocal stream
            stream = batches()  # on the tables as (re)opened
            return next(stream, None)

        first = self._read(name, start)
        if first is None:
            return
        yield first
        while (batch := self._guarded(name, lambda: next(stream, None))) is not None:
            yield batch

    def nearest(self, query: np.ndarray, k: int, where: str | None = None, columns: Sequence[str] = (),
                nprobes: int = NPROBES, refine_factor: int = REFINE) -> pa.Table:
        """The ``k`` embedding rows nearest ``query`` by cosine, filtered by ``where`` (SQL) before the search.
        Exact without a vector index; with one, IVF-PQ over ``nprobes`` partitions, re-ranked exactly on the best
        ``k * refine_factor``."""
        ds = self.table("embeddings")
        if ds is None:
            return pa.table({c: [] for c in [*columns, "_distance"]})
        nearest: dict[str, Any] = {"column": "vector", "q": np.asarray(query, np.float32), "k": k,
                                   "metric": "cosine"}
        if self.has_vector_index():
            nearest |= {"nprobes": nprobes, "refine_factor": refine_factor}
        return self._read("embeddings", lambda: self._tables["embeddings"].to_table(
            columns=[c for c in columns if c != "_distance"] + ["_distance"], filter=where,
            prefilter=where is not None, nearest=nearest))

    def video(self, video_id: int, columns: Sequence[str]) -> dict | None:
        """One video's row (``columns`` of the videos table that exist in it), or None if no row has this id."""
        ds = self.table("videos")
        if ds is None:
            return None
        present = [c for c in columns if c in ds.schema.names]
        rows = self._read("videos", lambda: self._tables["videos"].to_table(
            columns=present, filter=f"video_id = {int(video_id)}").to_pylist())
        return rows[0] if rows else None

    def segments(self, video_id: int, columns: Sequence[str]) -> list[dict]:
        """One video's windows (``columns`` of the embeddings table), in time order."""
        ds = self.table("embeddings")
        if ds is None:
            return []
        rows = self._read("embeddings", lambda: self._tables["embeddings"].to_table(
            columns=list(columns), filter=f"video_id = {int(video_id)} AND kind = 'segment'").to_pylist())
        return sorted(rows, key=lambda r: (r["start_s"], r["end_s"]))

    def indexed_rows(self) -> int | None:
        """Rows the vector index covers (later appends are searched exactly beside it), or None without one."""
        if self._indexed is None:
            ds = self.table("embeddings")
            found = [i for i in (ds.describe_indices() if ds is not None else []) if i.name == VECTOR_INDEX]
            self._indexed = (found[0].num_rows_indexed if found else None,)
        return self._indexed[0]

    def has_vector_index(self) -> bool:
        return self.indexed_rows() is not None

    # ---- writing --------------------------------------------------------------------------------------------------

    def commit(self, videos: pa.Table, embeddings: pa.Table, replace: Sequence[str] = ()) -> None:
        """Add one part atomically: rows of ``replace`` paths are deleted first (a changed file tagged again)."""
        assert self.writable, "opened read-only"
        if replace:
            where = "path IN (" + ", ".join(sql_string(stored_name(p)) for p in replace) + ")"
            for name in self.TABLES:
                if self.table(name) is not None:
                    self._tables[name].delete(where)
        for name, rows in (("embeddings", embeddings), ("videos", videos)):
            if rows.num_rows:
                self._append(name, rows)
        commits = self.state.commits + 1
        self._record(commits=commits, next_video_id=self.state.next_video_id + videos.num_rows)
        if commits % COMPACT_EVERY == 0:
            self.compact()

    def _append(self, name: str, rows: pa.Table) -> None:
        path = str(self.folder / f"{name}.lance")
        ds = self.table(name)
        if ds is not None and (extra := set(rows.column_names) - set(ds.schema.names)):
            rows = rows.drop_columns(sorted(extra))  # a column added since the index was written (posters)
        if ds is None:  # the settings ride in the schema too: repair_index reads them if state.json is lost
            rows = rows.replace_schema_metadata({SETTINGS_KEY: json.dumps(
                {"settings": self.state.settings, "dim": self.state.dim})})
        self._tables[name] = self.lance.write_dataset(rows, ds if ds is not None else path,
                                                      mode="append" if ds is not None else "create")

    def _record(self, **changes: Any) -> None:
        """Commit: state.json names the tables' current versions, their row counts and the checksums of the files
        those versions read (the new ones hashed now)."""
        versions = {name: (ds.version if ds is not None else 0) for name, ds in
                    ((n, self.table(n)) for n in self.TABLES)}
        rows = {name: ds.count_rows() for name, ds in self._tables.items()}
        read = [rel for name, ds in self._tables.items() for rel in version_files(name, ds)]
        recorded = checksums(self.folder, read, self.state.files)
        self.state = dataclasses.replace(self.state, versions=versions, rows=rows, files=recorded, **changes)
        self.state.write(self.folder)

    def compact(self) -> None:
        """Merge small fragments, then delete the versions older than ``KEEP_VERSIONS`` seconds that state.json no
        longer names (and their files)."""
        present = [name for name in self.TABLES if self.table(name) is not None]
        for name in present:
            self._tables[name].optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
        self.record_change(present)
        for name in self.TABLES:
            ds = self.table(name)
            if ds is not None:
                ds.cleanup_old_versions(older_than=timedelta(seconds=KEEP_VERSIONS), delete_unverified=True)

    def record_change(self, names: Sequence[str]) -> None:
        """Commit what was changed on tables' datasets in place (``table_indexes`` built an index on them): reopen
        them at their latest versions and write state.json naming those."""
        for name in names:
            self._tables[name] = self.lance.dataset(str(self.folder / f"{name}.lance"))
        self._indexed = None
        self._record()


def open_indexes(folder: Path, write: bool = False) -> list[TagIndex]:
    """The index in ``folder``, or the rank-* indexes of a sharded run in rank order."""
    folder = Path(folder).expanduser()
    if (folder / "state.json").exists() or (folder / "manifest.json").exists():
        return [TagIndex.open(folder, write)]
    ranks = sorted(f for f in folder.glob("rank-*") if (f / "state.json").exists() or (f / "manifest.json").exists())
    if not ranks:
        raise UserError(f"{folder}: not a tag index (no state.json); pass the OUT.index folder tag wrote")
    return [TagIndex.open(f, write) for f in ranks]


def common_settings(indexes: Sequence[TagIndex]) -> dict:
    """The settings the indexes were tagged with (a sharded run's ranks differ only in their shard)."""
    return {k: v for k, v in indexes[0].state.settings.items() if k != "shard"}
