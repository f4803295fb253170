"""Which files an archive holds: a folder searched recursively, or a manifest of paths."""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from clip_model.errors import UserError

LISTING_FAILURE = "cannot list folder"  # the reason of a folder's error row (re-listed on every run)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")


def discover(source: str | Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
             ) -> tuple[list[Path], list[dict]]:
    """Absolute paths of the videos under a folder (recursive, sorted) or listed in a manifest file (one path per line,
    relative to the manifest; ``#`` comments), and error rows for folders that cannot be read. A
    file reached by two names (a link to it in the same archive) is listed once, under the first; a link to nothing, or one
    of a loop, is listed under its own name (its error row then says so).

    A manifest line is a name as it stands, spaces included; only where no such file exists is it taken without its
    leading and trailing spaces. Its bytes need not be UTF-8 (names are read as the file system gives them).

    ``include``/``exclude`` are globs on the path relative to the folder (default: common video extensions).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"{source}: no such archive folder or manifest file")
    errors: list[dict] = []
    if source.is_file() and (include or exclude):
        raise UserError(f"{source}: --include/--exclude filter a folder's files; a manifest lists its files itself")
    if source.is_file():
        try:
            lines = os.fsdecode(source.read_bytes()).splitlines()
        except OSError as e:
            raise UserError(f"{source}: cannot read the manifest: {e.strerror}") from None
        paths = []
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                named = source.parent / line
                paths.append(_resolved(named if os.path.lexists(named) else source.parent / line.strip()))
        return list(dict.fromkeys(paths)), errors

    def unreadable(e: OSError) -> None:
        errors.append({"path": str(Path(e.filename).resolve()), "stage": "open", "status": "error",
                       "reason": f"{LISTING_FAILURE}: {e.strerror}"})

    found = []
    for real, rel, is_link in _walk(source, unreadable):
        name = rel.rpartition("/")[2]
        wanted = any(fnmatch.fnmatch(rel, g) for g in include) if include else name.lower().endswith(
            VIDEO_EXTENSIONS)
        if wanted and not any(fnmatch.fnmatch(rel, g) for g in exclude):
            found.append(_resolved(Path(real)) if is_link else Path(real))
    return list(dict.fromkeys(found)), errors  # a file linked to from inside the archive is listed once


def _resolved(path: Path) -> Path:
    """The real path of ``path``; a link to nothing, or one of a loop, stays itself (tagging gives it an error row,
    ``unreadable_reason``)."""
    try:
        return Path(os.path.realpath(os.path.abspath(path), strict=True))
    except OSError:
        return Path(os.path.abspath(path))


def _walk(source: Path, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, str, bool]]:
    """(resolved path, path relative to ``source``, whether it is a symlink) of every file under ``source``, in the
    order of ``os.walk`` with sorted names (a folder's files, then its subfolders, depth first); links to folders are
    not followed. Only the root is resolved: folders walked into are real, so a file's path is its resolved path
    unless the file itself is a link (one ``realpath`` per file made listing 10^6 files slow)."""
    stack = [(os.path.realpath(source), str(source), "")]
    while stack:
        real, shown, rel = stack.pop()
        try:
            with os.scandir(shown) as it:
                entries = list(it)
        except OSError as e:
            onerror(e)
            continue
        files, folders = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry)
            elif not entry.is_symlink():
                folders.append(entry.name)
        for entry in sorted(files, key=lambda e: e.name):
            try:
                is_link = entry.is_symlink()
            except OSError:  # gone since the folder was read: listed as it is, its stamp will say it is gone
                is_link = False
            yield os.path.join(real, entry.name), rel + entry.name, is_link
        for name in sorted(folders, reverse=True):
            stack.append((os.path.join(real, name), os.path.join(shown, name), rel + name + "/"))


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns): a file tagged at another stamp has changed and is tagged again. None if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns

