"""The tag job's decode worker: a video's sliding windows, decoded in chunks and resized to the model's input, as
NumPy arrays. It imports neither torch nor clip_model, so a decode worker starts in a fraction of a second and holds
about a tenth of the memory a torch import costs (``benchmarks/bench_tag.py`` measures both).

Frames are resized to the model's input here (``frame_geometry``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.video import Backend
from pipeline.video.open import keyframe_choice, open_video
from pipeline.video.reader import VideoDecodeError, VideoInfo
from pipeline.video.samplers import FrameChoice, sliding_windows
from pipeline.video.supervisor import trim_heap
from pipeline.video.thumbnails import jpeg

from .frame_geometry import FrameGeometry


class StageError(Exception):
    """A decode failure labelled with the stage it happened in (``open`` or ``decode``)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.stage, self.reason)


@dataclass(frozen=True)
class WindowTask:
    path: str
    geometry: FrameGeometry  # the model's: frames leave the worker resized and cropped to it
    num_frames: int = 8  # per window
    window_s: float = 4.0
    stride_s: float = 2.0
    backend: Backend = "auto"
    resize: int | None = None  # the decoder's short-side cap (before the model's resize)
    chunk_mb: float = 32.0  # decoded frames held at once, at most (one window's frames always fit)
    split: int = 1  # a long video's windows may be cut into up to this many time ranges, decoded by as many workers
    window_range: tuple[int, int] | None = None  # [a, b): the window numbers of one such range; None: the whole video
    min_range_s: float = 60.0  # seconds of video per range, at least: reopening the file for a range (a demux pass
    # over the whole file: 0.5 s for an hour of 640x360 H.264, bench_tag.py --split-minutes) stays small beside
    # decoding its windows (22 s for that hour)
    frame_choice: FrameChoice = "exact"  # keyframes: each window's frames are the keyframes nearest its instants

    def __post_init__(self) -> None:
        if self.split < 1:
            raise ValueError(f"split ({self.split}) must be >= 1")
        if self.min_range_s <= 0:
            raise ValueError(f"min_range_s ({self.min_range_s}) must be > 0")


@dataclass(frozen=True)
class WindowHeader:
    """First item of every attempt at a video or at one of its time ranges: a consumer starts (or starts over) on
    it. A whole video's header lists its ``ranges``; its own worker decodes the first, and the consumer asks other
    workers for the rest (``range_tasks``)."""

    info: VideoInfo
    bounds: tuple[tuple[float, float], ...]  # (start_s, end_s) of every window
    ranges: tuple[tuple[int, int], ...]  # [a, b) window numbers: the video's ranges, or this range alone


@dataclass(frozen=True)
class WindowChunk:
    first: int  # number of this chunk's first window
    positions: np.ndarray  # (w, T) int64: window j's frames are frames[positions[j]]
    frames: np.ndarray  # uint8 (U, S, S, 3): the chunk's distinct frames, time order, at the model's size
    poster: bytes | None = None  # the video's poster (JPEG), in the chunk holding the middle window
    frame_s: np.ndarray | None = None  # (U,) float64 seconds of the distinct frames (keyframe sampling: the keyframes')


def chunk_ranges(indices: np.ndarray, max_frames: int) -> Iterator[tuple[int, int]]:
    """Consecutive (start, end) runs of the (W, T) window frame indices with at most ``max_frames`` distinct frames
    each (a single window may exceed it)."""
    start, seen = 0, set[int]()
    for k, row in enumerate(indices.tolist()):
        grown = seen.union(row)
        if k > start and len(grown) > max_frames:
            yield start, k
            start, grown = k, set(row)
        seen = grown
    if len(indices):
        yield start, len(indices)


def time_ranges(num_windows: int, duration: float, split: int, min_range_s: float) -> tuple[tuple[int, int], ...]:
    """[a, b) window numbers cutting a video into at most ``split`` ranges of equal window counts (within one), as
    many as give each ``min_range_s`` of video or more; a single range where the video is too short for two."""
    parts = max(1, min(split, int(duration // min_range_s), num_windows))
    cuts = np.linspace(0, num_windows, parts + 1).round().astype(int).tolist()
    return tuple(zip(cuts[:-1], cuts[1:]))


def range_tasks(task: WindowTask, header: WindowHeader) -> list[WindowTask]:
    """The tasks of a video's other time ranges, which its whole-video task's header asks for (none where ``task``
    is a range's own, or the video is not split)."""
    if task.window_range is not None:
        return []
    return [dataclasses.replace(task, window_range=r) for r in header.ranges[1:]]


def lost_task(task: WindowTask, first: Any) -> WindowTask:
    """``DecodeWorkers``' rerun of a task whose machine was lost: the same task, except that a whole video whose
    header came (its other time ranges went out with it, ``range_tasks``) runs again as its own first range only,
    which the consumer takes as that range restarting."""
    if task.window_range is None and isinstance(first, WindowHeader):
        return dataclasses.replace(task, window_range=first.ranges[0])
    return task


def decode_windows(task: WindowTask) -> Generator[WindowHeader | WindowChunk, None, tuple[str, ...]]:
    """Yield a WindowHeader, then WindowChunks in time order; return the decoder's warnings. Runs in a worker.

    A whole video (``task.window_range`` None) of ``2 * min_range_s`` or more is cut into time ranges where its reader
    seeks (``time_ranges``): the header names them all and this worker decodes the first. A range's task decodes
    its own windows, its first chunk read from the keyframe before them. A retry on decord (after PyAV's worker
    crashed) is never cut, so a consumer can tell a crashed attempt's ranges from a live one's."""
    if not task.geometry.antialias:  # torch resizes these frames: one of several workers, it takes one core
        import torch

        torch.set_num_threads(1)
    try:
        reader = open_video(task.path, task.backend, resize=task.resize)
    except VideoDecodeError as e:
        raise StageError("open", e.reason) from None
    with reader:
        try:  # the demuxed index (and the first frame, for the rotation) are part of opening
            windows = sliding_windows(reader.timestamps, window_s=task.window_s, stride_s=task.stride_s,
                                      frames_per_window=task.num_frames, duration=reader.duration)
            info = reader.info
        except VideoDecodeError as e:
            raise StageError("open", e.reason) from None
        ranges: tuple[tuple[int, int], ...]
        if task.window_range is not None:
            first, last = task.window_range
            if not 0 <= first < last <= len(windows):
                raise StageError("open", f"windows {first}-{last} asked for, but the video now has {len(windows)}: "
                                         "the file changed while it was being tagged")
            ranges = (task.window_range,)
        elif task.backend != "decord" and reader.seeks:
            ranges = time_ranges(len(windows), reader.duration, task.split, task.min_range_s)
        else:
            ranges = ((0, len(windows)),)
        yield WindowHeader(info, tuple((w.start_s, w.end_s) for w in windows), ranges)
        indices = np.stack([w.indices for w in windows])  # (W, T) frame numbers
        if task.frame_choice == "keyframes":
            indices = keyframe_choice(reader, indices, len(windows), "windows")
        middle = len(indices) // 2
        first, last = ranges[0]
        frame_bytes = info.height * info.width * 3
        for start, end in chunk_ranges(indices[first:last], max(1, int(task.chunk_mb * 2**20 // frame_bytes))):
            start, end = start + first, end + first
            unique, inverse = np.unique(indices[start:end], return_inverse=True)
            try:
                frames = reader.read_frames(unique)  # (U, H, W, 3) uint8
            except VideoDecodeError as e:
                raise StageError("decode", e.reason) from None
            poster = None
            if start <= middle < end:  # the poster: the middle window's middle frame, at full (decoded) size
                frame = indices[middle, indices.shape[1] // 2]
                try:
                    poster = jpeg(frames[int(np.searchsorted(unique, frame))])
                except (ValueError, OSError):  # a picture for the page, not a reason to fail the video
                    poster = None
            small = task.geometry.resize_crop(frames)  # (U, S, S, 3)
            del frames
            yield WindowChunk(start, inverse.reshape(end - start, -1), small, poster, reader.timestamps[unique])
            del small
            trim_heap()  # the chunk has left: give its pages back before the next (see trim_heap)
        return tuple(reader.warnings)
