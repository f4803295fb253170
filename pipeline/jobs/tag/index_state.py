"""What an index folder is, beside its two tables: ``state.json`` (``IndexState``: format, settings, the committed
version, row count and file checksums of each table, the next video id), written atomically; the tables' columns;
the writer's lock; the error a damaged file raises; the checksums state.json keeps of the files each version reads;
and file names as the index stores them. ``index.py`` reads and commits the tables themselves."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from clip_model.errors import UserError

FORMAT = "clip_video.tag_index"
FORMAT_VERSION = 3  # 1: manifest.json with JSON and .npz parts (migrated by ``migrate``); 3: Lance tables
TABLES = ("videos", "embeddings")
SETTINGS_KEY = b"clip_video.index"  # each table's schema metadata: the settings and dim, for repair_index

# videos.lance: one row per tagged path: stamp (size, mtime), status, failure stage and reason, duration, decoder,
# window count, warnings, the top labels it got when it was tagged, and a poster (a JPEG of at most ~20 KB; indexes
# written before posters have no such column)
VIDEO_COLUMNS = pa.schema([
    ("video_id", pa.int64()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
    ("status", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("duration_s", pa.float64()),
    ("decoder", pa.string()), ("windows", pa.int32()), ("warnings", pa.string()),
    ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())), ("poster", pa.binary()),
])


def embedding_schema(dim: int, tokens: int = 0) -> pa.Schema:
    """The embeddings table's columns: one row per video (kind "video": the normalised mean of its windows) and per
    window (kind "segment": start and end seconds, and the seconds of the frames it was encoded from: with
    ``--sampling keyframes`` the keyframes it took), with its top label at tagging time and a float16 unit vector;
    what search, retag and the output tables read. ``tokens`` K > 0 adds the K visual tokens X-CLIP's prompt
    generator conditions label texts on (K x E float16: 49 x 512 for B/32, 50 KB a row; 196 x 512 for B/16), so
    retag and search need no decoding."""
    return pa.schema([
        ("video_id", pa.int64()), ("path", pa.string()), ("kind", pa.string()), ("window", pa.int32()),
        ("start_s", pa.float64()), ("end_s", pa.float64()), ("label", pa.string()), ("score", pa.float32()),
        ("frame_s", pa.list_(pa.float32())),  # a segment's frames' seconds (indexes written before: no column)
        ("vector", pa.list_(pa.float16(), dim)),
    ] + ([("tokens", pa.list_(pa.float16(), tokens * dim))] if tokens else []))


def index_folder(out: Path) -> Path:
    return out.with_name(out.name + ".index")


def recorded_precision(out: Path) -> str | None:
    """The precision the tag index of ``out`` (or its rank 0's) was written in, if there is one."""
    folder = index_folder(out.expanduser().resolve())
    for state in (folder / "state.json", *sorted(folder.glob("rank-*/state.json"))[:1]):
        try:
            return str(json.loads(state.read_text())["settings"]["model"]["precision"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def import_lance() -> Any:
    try:
        import lance
    except ImportError:
        raise ImportError("the tag index needs pylance: pip install pylance") from None
    return lance


@dataclass(frozen=True)
class IndexState:
    """state.json: what a reader may see and a writer must restore."""

    settings: dict
    dim: int
    versions: dict[str, int]  # table -> committed Lance version (0: not created yet)
    next_video_id: int = 0
    commits: int = 0
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    rows: dict[str, int] = field(default_factory=dict)  # table -> committed row count
    files: dict[str, list] = field(default_factory=dict)  # "table.lance/..." -> [size, sha256] of each file read

    @classmethod
    def read(cls, folder: Path) -> IndexState:
        path = folder / "state.json"
        if not path.exists():
            if (folder / "manifest.json").exists():
                raise UserError(f"{folder}: a tag index in the old format (manifest.json and parts); convert it once "
                                 f"with: run_pipeline.py migrate-index {folder}")
            if any((folder / f"{name}.lance").exists() for name in TABLES):
                raise UserError(f"{folder}: the tables are here but state.json is gone; rebuild it with "
                                 f"run_pipeline.py repair-index {folder}, or start over with tag --restart")
            raise UserError(f"{folder}: not a tag index (no state.json); pass the OUT.index folder tag wrote")
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path}: unreadable tag index state ({e}); delete the folder to start over") from None
        if state.format != FORMAT or state.format_version != FORMAT_VERSION:
            raise UserError(f"{path}: tag index format {state.format} v{state.format_version}, this version reads "
                             f"{FORMAT} v{FORMAT_VERSION}")
        return state

    def write(self, folder: Path) -> None:
        """Atomically: a temporary file, fsynced, renamed over state.json, the folder fsynced."""
        write_atomically(folder / "state.json", json.dumps(dataclasses.asdict(self)).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` all or nothing: a unique temporary file beside it, fsynced, renamed over it, the folder
    fsynced; the temporary is removed if anything fails (a full disk leaves no stray file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


class IndexDamaged(UserError):
    """A file of the index does not match its checksum, or a read of it failed."""

    def __init__(self, folder: Path, table: str, file: str):
        super().__init__(f"{folder}: damaged (table {table}, file {file}): run run_pipeline.py verify {folder}")
        self.table, self.file = table, file


def writer_lock(folder: Path) -> Any:
    """An exclusive lock on the index for this process's lifetime: a second writer would undo the first one's
    commit under way (it restores the committed versions), so it is refused instead."""
    return exclusive_lock(folder / "writer.lock", f"{folder}: another process is writing this tag index; wait for it "
                                                  "or use another --out")


def exclusive_lock(path: Path, busy: str) -> Any:
    """An open file holding ``flock(LOCK_EX)`` on ``path`` (released when closed, or when the process ends); a lock
    held elsewhere raises ``UserError(busy)``."""
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 - held open for as long as the lock is
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(busy) from None
    return handle


def is_lance_error(e: BaseException) -> bool:
    """Whether an exception came from Lance's reader (its errors are ValueErrors and OSErrors naming LanceError or
    a missing object), not from this code."""
    text = str(e)
    return "LanceError" in text or "Not found" in text or "lance" in type(e).__module__.lower()


def sql_string(value: str) -> str:
    """A SQL string literal: single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


# SHA-256 of the files a tag index's committed versions read: Lance keeps no checksums of its data pages, so a flipped
# bit would otherwise be read back as a wrong score without a word.

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def version_files(table: str, ds: Any) -> Iterator[str]:
    """The files (relative to the index folder) that version ``ds`` of ``table`` reads: each fragment's data files and
    deletion file, and each index segment's files. Lance writes each once and never changes it. Their number is bounded
    by compaction, so listing them costs the same at every commit."""
    root = Path(ds.uri)
    for fragment in ds.get_fragments():
        for data in fragment.data_files():
            yield f"{table}.lance/data/{data.path}"
        if deletion := fragment.deletion_file():
            yield f"{table}.lance/{deletion}"
    for index in ds.describe_indices():
        for segment in index.segments:
            folder = root / "_indices" / str(segment.uuid)
            for name in sorted(os.listdir(folder)) if folder.is_dir() else ():
                yield f"{table}.lance/_indices/{segment.uuid}/{name}"


def checksums(folder: Path, files: list[str], known: Mapping[str, list]) -> dict[str, list]:
    """[size, sha256] of each of ``files``, taken from ``known`` where it is there (only new files are hashed)."""
    return {rel: known[rel] if rel in known else [os.path.getsize(folder / rel), sha256(folder / rel)]
            for rel in files}


def differing(folder: Path, recorded: Mapping[str, list], sizes_only: bool = False) -> list[str]:
    """The recorded files that are missing or differ from their checksum (``sizes_only``: from their size)."""
    bad = []
    for rel, (size, digest) in sorted(recorded.items()):
        path = folder / rel
        try:
            if os.path.getsize(path) != size or (not sizes_only and sha256(path) != digest):
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


# File names as the index stores them, and as tables and terminals show them. A file name that is not UTF-8 (Python
# gives its undecodable bytes as the surrogates U+DC80-U+DCFF) cannot be an Arrow string. The index stores each such
# byte as NUL and two hex digits: no file name holds a NUL, so the escape is reversible and leaves every UTF-8 name as
# it is. Outputs, search's table and the server show those bytes as ``\xHH``.

_ESCAPED = re.compile("\x00([0-9a-f]{2})")


def stored_name(path: str) -> str:
    """A file name as the index stores it."""
    if path.isascii():
        return path
    return "".join(f"\x00{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)


def file_name(stored: str) -> str:
    """The file name the index stored as ``stored`` (``stored_name``'s inverse)."""
    return stored if "\x00" not in stored else _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)


def shown_name(path: str) -> str:
    """A file name to print or write in a table: bytes that are not UTF-8 as ``\\xHH``."""
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "backslashreplace")
