"""A tagged archive as the web app sees it: search, one video's row and windows, its file, its pictures.

Everything is looked up by ``video_id`` in the index: no path from a request is ever opened. A file is opened only if
it is a video the index lists as tagged (status ok), and it is checked after it is opened, on the open descriptor:
the kernel's name for what was opened must be the listed path (no symlink anywhere in it, none swapped in since) and
its size and modification time those it was tagged at (``FileChanged`` otherwise). The response and the thumbnail
worker then read that same descriptor (``/proc/<pid>/fd/<n>``), so nothing can be swapped in between the check and
the read. Where /proc is missing (not Linux) the check falls back to the path (realpath and stat), which a file
swapped in that instant could pass.

The index is reopened when a writer commits (its state.json changes), so a ``tag`` still running shows up.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.video.supervisor import WorkerPool
from pipeline.video.thumbnails import ThumbnailTask, jpeg, thumbnail_jpeg

from ..tag.index import TagIndex, common_settings, open_indexes
from ..tag.index_state import file_name, shown_name
from ..tag.query import SearchFilter, index_model, text_search

if TYPE_CHECKING:
    from pipeline.model.video_text import VideoTextModel

LOG = logging.getLogger(__name__)
VIDEO_FIELDS = ("video_id", "path", "status", "stage", "reason", "duration_s", "decoder", "windows", "warnings",
                "labels", "scores", "size", "mtime_ns")
SEGMENT_FIELDS = ("window", "start_s", "end_s", "label", "score")
CACHE_BYTES = 64 << 20  # segment thumbnails kept in memory
THUMBNAIL_TIMEOUT_S = 20.0  # a decode worker with no thumbnail by then is killed (the page gets the placeholder)
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
               ".ts": "video/mp2t", ".3gp": "video/3gpp", ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv"}


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


class NotFound(LookupError):
    """No such video in the index, or it has no file to show (it failed to decode when tagged)."""


class FileChanged(RuntimeError):
    """The listed file is gone, is now a link elsewhere, or changed since it was tagged: it is not opened."""


@dataclass(frozen=True)
class ListedFile:
    """An open, checked descriptor of a listed file; ``close`` it when done."""

    path: Path  # as the index lists it
    media_type: str
    fd: int
    _open: bool = True

    def opened(self, pid: int | None = None) -> str:
        """A path that reads this descriptor's file (in this process, or in process ``pid``, e.g. a worker's)."""
        if not os.path.isdir("/proc/self/fd"):
            return str(self.path)
        return f"/proc/{'self' if pid is None else pid}/fd/{self.fd}"

    def close(self) -> None:
        """Close the descriptor (once; a second call does nothing)."""
        if self._open:
            object.__setattr__(self, "_open", False)
            os.close(self.fd)


class Archive:
    """Read-only access to a tag index (one folder, or a sharded run's rank folders) and the files it lists."""

    def __init__(self, index: str | Path, device: str = "cpu", thumbnail_workers: int = 2):
        self.folder = Path(index).expanduser().resolve()
        self._indexes: list[TagIndex] = open_indexes(self.folder)
        self._states = self._state_stamps()
        self._reopen_lock = threading.Lock()
        self.settings = common_settings(self._indexes)
        self._device = device
        self._model: VideoTextModel | None = None
        self._model_lock = threading.Lock()
        self.thumbnails = Thumbnails(thumbnail_workers)

    def close(self) -> None:
        self.thumbnails.close()

    def _state_stamps(self) -> list[int]:
        return [(index.folder / "state.json").stat().st_mtime_ns for index in self._indexes]

    @property
    def indexes(self) -> list[TagIndex]:
        """The index as last committed: reopened when a writer has committed since (a stat per request)."""
        with self._reopen_lock:
            if self._state_stamps() != self._states:
                self._indexes = open_indexes(self.folder)
                self._states = self._state_stamps()
        return self._indexes

    # ---- search ---------------------------------------------------------------------------------------------------

    def labels(self) -> list[str]:
        return list(self.settings["labels"])

    def search(self, query: str, k: int, where: SearchFilter | None = None) -> list[dict]:
        """The same hits, in the same order, as ``run_pipeline.py search`` (``query.search``) gives."""
        with self._model_lock:  # one text encoder, loaded on the first query, used by one request at a time
            if self._model is None:
                self._model = index_model(self.settings, self._device)
        hits = text_search(self._model, self.indexes, query, k, where, lock=self._model_lock)
        return [hit | {"path": shown_name(hit["path"])} for hit in hits]  # JSON: names that are not UTF-8 as \xHH

    # ---- one video ------------------------------------------------------------------------------------------------

    def _find(self, video_id: int, columns: tuple[str, ...]) -> dict:
        for index in self.indexes:
            row = index.video(video_id, columns)
            if row is not None:
                return row
        raise NotFound(f"no video {video_id} in {self.folder}")

    def video(self, video_id: int) -> dict:
        """The video's row (without its poster) and its windows in time order."""
        row = self._find(video_id, VIDEO_FIELDS)
        segments = [s for index in self.indexes for s in index.segments(video_id, SEGMENT_FIELDS)]
        row = {k: v for k, v in row.items() if k not in ("size", "mtime_ns")}
        row["path"] = shown_name(file_name(row["path"]))
        row["media_type"] = media_type(Path(row["path"]))
        return {"video": row, "segments": segments}

    def open_listed(self, video_id: int) -> ListedFile:
        """The file of a tagged video, opened and then checked to be the one the index lists (see the module's
        doc). The caller closes it."""
        row = self._find(video_id, ("path", "status", "size", "mtime_ns"))
        if row["status"] != "ok":
            raise NotFound(f"video {video_id} was not tagged ({row['status']}): there is no picture of it to show")
        path = Path(file_name(row["path"]))
        try:  # never blocks: a FIFO or device swapped in for the file is opened, found not regular, and refused
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            raise FileChanged(f"video {video_id}: its file is gone or is now a link") from None
        try:
            st = os.fstat(fd)
            opened = (os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd")
                      else os.path.realpath(path))
            if (opened != str(path) or not stat.S_ISREG(st.st_mode)
                    or (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"])):
                raise FileChanged(f"video {video_id}: its file changed since it was tagged; tag the archive again")
        except BaseException:
            os.close(fd)
            raise
        return ListedFile(path, media_type(path), fd)

    def thumbnail(self, video_id: int, time_s: float | None) -> tuple[bytes, bool]:
        """(JPEG, whether it shows the video): the stored poster when no time is asked for, else the frame at
        ``time_s`` decoded in a supervised worker (cached); a placeholder where the file cannot be decoded."""
        if time_s is None:  # the poster tag stored (indexes written before posters have none), else mid-video
            row = self._find(video_id, ("poster", "duration_s"))
            if row.get("poster"):
                return row["poster"], True
            time_s = (row.get("duration_s") or 0.0) / 2
        try:
            listed = self.open_listed(video_id)
        except FileChanged:
            return self.thumbnails.placeholder, False
        try:
            return self.thumbnails.get(listed, time_s)
        finally:
            listed.close()


class Thumbnails:
    """Frames decoded on request by supervised worker processes (a file that hangs or crashes its decoder costs one
    worker, never the server), ``workers`` requests at a time, kept in a byte-bounded LRU cache."""

    def __init__(self, workers: int = 2, cache_bytes: int = CACHE_BYTES):
        self._pools: queue.Queue[WorkerPool] = queue.Queue()  # one single-worker pool per request under way
        self._all = [WorkerPool(thumbnail_jpeg, num_workers=1, timeout_s=THUMBNAIL_TIMEOUT_S, max_tasks=200)
                     for _ in range(workers)]
        for pool in self._all:
            self._pools.put(pool)
        self._lock = threading.Lock()  # guards the cache
        self._cache: OrderedDict[tuple[str, float], bytes] = OrderedDict()
        self._cache_bytes, self._held = cache_bytes, 0
        self.placeholder = jpeg(np.full((90, 160, 3), 48, np.uint8))

    def close(self) -> None:
        for pool in self._all:
            pool.close()

    def get(self, listed: ListedFile, time_s: float) -> tuple[bytes, bool]:
        path = str(listed.path)
        key = (path, round(float(time_s), 1))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        try:  # every worker busy for this long: the placeholder, rather than a request thread held up
            pool = self._pools.get(timeout=THUMBNAIL_TIMEOUT_S)
        except queue.Empty:
            return self.placeholder, False
        try:  # the worker reads the descriptor this process opened and checked, through /proc
            outcome = next(iter(pool.map([ThumbnailTask(listed.opened(os.getpid()), key[1])])))
        finally:
            self._pools.put(pool)
        if outcome.status != "ok":
            LOG.warning("thumbnail of %s at %.1f s: %s", path, key[1], outcome.failure)
            return self.placeholder, False
        data: bytes = outcome.result
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._held += len(data)
            while self._held > self._cache_bytes:
                self._held -= len(self._cache.popitem(last=False)[1])
        return data, True
