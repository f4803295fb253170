"""A tagged archive as the web app sees it: search, one video's row and windows, its file, its pictures.

Everything is looked up by ``video_id`` in the index: no path from a request is ever opened. A file is opened only if
it is a video the index lists as tagged (status ok), its path still resolves to itself (no symlink swapped in since),
and its size and modification time are still those it was tagged at (``FileChanged`` otherwise).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.thumbnails import ThumbnailTask, jpeg, thumbnail_jpeg
from pipeline.video.supervisor import WorkerPool

from ..tag.index import TagIndex, common_settings, open_indexes
from ..tag.query import SearchFilter, index_model, nearest, text_embedding

if TYPE_CHECKING:
    import clip_model

LOG = logging.getLogger(__name__)
VIDEO_FIELDS = ("video_id", "path", "status", "stage", "reason", "duration_s", "decoder", "windows", "warnings",
                "labels", "scores", "size", "mtime_ns")
SEGMENT_FIELDS = ("window", "start_s", "end_s", "label", "score")
CACHE_BYTES = 64 << 20  # segment thumbnails kept in memory
THUMBNAIL_TIMEOUT_S = 20.0  # a decode worker with no thumbnail by then is killed (the page gets the placeholder)
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
               ".ts": "video/mp2t", ".3gp": "video/3gpp", ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv"}


class NotFound(LookupError):
    """No such video in the index, or it has no file to show (it failed to decode when tagged)."""


class FileChanged(RuntimeError):
    """The listed file is gone, is now a link elsewhere, or changed since it was tagged: it is not opened."""


@dataclass(frozen=True)
class ListedFile:
    path: Path
    media_type: str


class Archive:
    """Read-only access to a tag index (one folder, or a sharded run's rank folders) and the files it lists."""

    def __init__(self, index: str | Path, device: str = "cpu", thumbnail_workers: int = 2):
        self.folder = Path(index).expanduser().resolve()
        self.indexes: list[TagIndex] = open_indexes(self.folder)
        self.settings = common_settings(self.indexes)
        self._device = device
        self._model: clip_model.CLIP | None = None
        self._model_lock = threading.Lock()
        self.thumbnails = Thumbnails(thumbnail_workers)

    def close(self) -> None:
        self.thumbnails.close()

    # ---- search ---------------------------------------------------------------------------------------------------

    def labels(self) -> list[str]:
        return list(self.settings["labels"])

    def search(self, query: str, k: int, where: SearchFilter | None = None) -> list[dict]:
        """The same hits, in the same order, as ``run_pipeline.py search`` (``query.search``) gives."""
        with self._model_lock:  # one text encoder, loaded on the first query, used by one request at a time
            if self._model is None:
                self._model = index_model(self.settings, self._device)
            vector = text_embedding(self._model, query)
        return nearest(self.indexes, vector, k, where)

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
        row["media_type"] = MEDIA_TYPES.get(Path(row["path"]).suffix.lower(), "application/octet-stream")
        return {"video": row, "segments": segments}

    def listed_file(self, video_id: int) -> ListedFile:
        """The file of a tagged video, checked to be the one the index lists (see the module's doc)."""
        row = self._find(video_id, ("path", "status", "size", "mtime_ns"))
        if row["status"] != "ok":
            raise NotFound(f"video {video_id} was not tagged ({row['status']}): there is no picture of it to show")
        path = Path(row["path"])
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            raise FileChanged(f"video {video_id}: its file is gone") from None
        if os.path.realpath(path) != str(path) or (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
            raise FileChanged(f"video {video_id}: its file changed since it was tagged; tag the archive again")
        return ListedFile(path, MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    def poster(self, video_id: int) -> bytes | None:
        """The JPEG tag stored for the video, if it stored one."""
        return self._find(video_id, ("poster",)).get("poster")

    def thumbnail(self, video_id: int, time_s: float | None) -> tuple[bytes, bool]:
        """(JPEG, whether it shows the video): the stored poster when no time is asked for, else the frame at
        ``time_s`` decoded in a supervised worker (cached); a placeholder where the file cannot be decoded."""
        if time_s is None and (poster := self.poster(video_id)):
            return poster, True
        try:
            listed = self.listed_file(video_id)
        except FileChanged:
            return self.thumbnails.placeholder, False
        if time_s is None:
            duration = self._find(video_id, ("duration_s",)).get("duration_s") or 0.0
            time_s = duration / 2
        return self.thumbnails.get(str(listed.path), time_s)


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

    def get(self, path: str, time_s: float) -> tuple[bytes, bool]:
        key = (path, round(float(time_s), 1))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        pool = self._pools.get()
        try:
            outcome = next(iter(pool.map([ThumbnailTask(path, key[1])])))
        finally:
            self._pools.put(pool)
        if outcome.status != "ok":
            LOG.warning("thumbnail of %s at %.1f s: %s: %s", path, key[1], outcome.status, outcome.error)
            return self.placeholder, False
        data: bytes = outcome.result
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._held += len(data)
            while self._held > self._cache_bytes:
                self._held -= len(self._cache.popitem(last=False)[1])
        return data, True
