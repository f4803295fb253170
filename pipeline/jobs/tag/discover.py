"""Which files an archive holds: a folder searched recursively, or a manifest of paths."""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")


def discover(source: str | Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
             ) -> tuple[list[Path], list[dict]]:
    """Absolute paths of the videos under a folder (recursive, sorted) or listed in a manifest file (one path per line,
    relative to the manifest; ``#`` comments), and error rows for folders that cannot be read.

    ``include``/``exclude`` are globs on the path relative to the folder (default: common video extensions).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ValueError(f"{source}: no such archive folder or manifest file")
    errors: list[dict] = []
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{source}: cannot read the manifest: {e}") from None
        paths = [(source.parent / line.strip()).resolve() for line in lines
                 if line.strip() and not line.lstrip().startswith("#")]
        return list(dict.fromkeys(paths)), errors

    def unreadable(e: OSError) -> None:
        errors.append({"path": str(Path(e.filename).resolve()), "stage": "open", "status": "error",
                       "reason": f"cannot list folder: {e.strerror}"})

    found = []
    for root, dirs, files in os.walk(source, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(source).as_posix()
            wanted = any(fnmatch.fnmatch(rel, g) for g in include) if include else name.lower().endswith(
                VIDEO_EXTENSIONS)
            if wanted and not any(fnmatch.fnmatch(rel, g) for g in exclude):
                found.append((Path(root) / name).resolve())
    return found, errors


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns): a file tagged at another stamp has changed and is tagged again. None if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
