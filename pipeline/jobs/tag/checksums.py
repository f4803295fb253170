"""SHA-256 of the files a tag index's committed versions read: Lance keeps no checksums of its data pages, so a
flipped bit would otherwise be read back as a wrong score without a word."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


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
