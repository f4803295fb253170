"""Sliding windows of videos, streamed out of decode workers in bounded chunks and pooled (the tag job's stages).

    worker:      open -> windows (video.samplers.sliding_windows) -> per chunk of windows: decode its distinct frames once
                 -> resize and crop to the model's size (uint8) -> yield (with the video's poster, a small JPEG of
                 the middle window's middle frame, in the chunk that holds it)
    this process: normalise -> encode, batched across videos (frame_features.FrameEncoder) -> each window's state
                 (``video_text``: its frames pooled, or X-CLIP's window encoded whole)

Memory is bounded whatever the video's length: a chunk holds at most ``chunk_mb`` of decoded frames, and the worker
is never more than one chunk ahead of the model (``pipeline.video.supervisor`` streams generator tasks). Overlapping windows
share frames (4 s windows every 2 s, 8 frames each, sample the same instants), so each distinct frame is decoded and
shipped once, and ``positions`` says which frames make up each window; a per-frame model encodes each once too (X-CLIP
encodes each window's frames together). Frames cross to the model's
process already resized and cropped (uint8, 3 x S x S), not at the decoder's size; ``ClipTransform.normalize``
finishes them there, so the pixels equal ``ClipTransform.video``'s.
"""
from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clip_model.config import PreprocessConfig
from clip_model.transform import ClipTransform
from pipeline.video import Backend
from pipeline.video.open import decode_in_workers, open_video
from pipeline.video.reader import VideoDecodeError, VideoInfo
from pipeline.video.samplers import sliding_windows
from pipeline.video.supervisor import trim_heap

from .frame_features import FrameEncoder
from .thumbnails import jpeg
from .video_text import VideoState, VideoTextModel

RESIZE_BATCH = 16  # frames resized at once: the float copies interpolate makes stay small


class StageError(Exception):
    """A decode failure labelled with the stage it happened in (``open`` or ``decode``)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.reason = f"{stage}: {reason}"


@dataclass(frozen=True)
class WindowTask:
    path: str
    preprocess: PreprocessConfig  # the model's: frames leave the worker resized and cropped to it
    num_frames: int = 8  # per window
    window_s: float = 4.0
    stride_s: float = 2.0
    backend: Backend = "auto"
    resize: int | None = None  # the decoder's short-side cap (before the model's resize)
    chunk_mb: float = 32.0  # decoded frames held at once, at most (one window's frames always fit)


@dataclass(frozen=True)
class WindowHeader:
    """First item of every attempt at a video: a consumer starts (or starts over) on it."""

    info: VideoInfo
    bounds: tuple[tuple[float, float], ...]  # (start_s, end_s) of every window


@dataclass(frozen=True)
class WindowChunk:
    first: int  # number of this chunk's first window
    positions: np.ndarray  # (w, T) int64: window j's frames are frames[positions[j]]
    frames: torch.Tensor  # uint8 (U, 3, S, S): the chunk's distinct frames, time order
    poster: bytes | None = None  # the video's poster (JPEG), in the chunk holding the middle window


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


def decode_windows(task: WindowTask) -> Generator[WindowHeader | WindowChunk, None, tuple[str, ...]]:
    """Yield a WindowHeader, then WindowChunks in time order; return the decoder's warnings. Runs in a worker."""
    torch.set_num_threads(1)  # one of several decode workers: the resize must not spread over every core
    try:
        reader = open_video(task.path, task.backend, resize=task.resize)
    except VideoDecodeError as e:
        raise StageError("open", e.reason) from None
    transform = ClipTransform(task.preprocess)
    with reader:
        try:  # the demuxed index (and the first frame, for the rotation) are part of opening
            windows = sliding_windows(reader.timestamps, window_s=task.window_s, stride_s=task.stride_s,
                                      frames_per_window=task.num_frames, duration=reader.duration)
            info = reader.info
        except VideoDecodeError as e:
            raise StageError("open", e.reason) from None
        yield WindowHeader(info, tuple((w.start_s, w.end_s) for w in windows))
        indices = np.stack([w.indices for w in windows])  # (W, T) frame numbers
        middle = len(indices) // 2
        frame_bytes = info.height * info.width * 3
        for start, end in chunk_ranges(indices, max(1, int(task.chunk_mb * 2**20 // frame_bytes))):
            unique, inverse = np.unique(indices[start:end], return_inverse=True)
            try:
                frames = reader.get_frames(unique)  # (U, H, W, 3) uint8
            except VideoDecodeError as e:
                raise StageError("decode", e.reason) from None
            poster = None
            if start <= middle < end:  # the poster: the middle window's middle frame, at full (decoded) size
                frame = indices[middle, indices.shape[1] // 2]
                try:
                    poster = jpeg(frames[int(np.searchsorted(unique, frame))].numpy())
                except (ValueError, OSError):  # a picture for the page, not a reason to fail the video
                    poster = None
            small = torch.cat([transform.resize_crop(part) for part in frames.split(RESIZE_BATCH)])  # (U, 3, S, S)
            del frames
            yield WindowChunk(start, inverse.reshape(end - start, -1), small, poster)
            del small
            trim_heap()  # the chunk has left: give its pages back before the next (see trim_heap)
        return tuple(reader.warnings)


@dataclass(frozen=True)
class WindowedVideo:
    info: VideoInfo
    bounds: tuple[tuple[float, float], ...]  # (start_s, end_s) per window
    windows: VideoState  # (W, ...): each window's unit vector (and X-CLIP's tokens)
    warnings: tuple[str, ...] = ()
    poster: bytes | None = None  # a small JPEG of the middle window's middle frame


@dataclass(eq=False)
class _Video:
    task: WindowTask  # the attempt under way (a retry runs on another backend)
    header: WindowHeader
    states: list[VideoState] = field(default_factory=list)  # (w, ...) per chunk, in order
    sent: int = 0  # chunks queued for the model
    encoded: int = 0  # chunks encoded and pooled
    decoded: bool = False  # the worker finished the video
    warnings: tuple[str, ...] = ()
    poster: bytes | None = None
    error: str | None = None


def _other_than(path: str) -> Callable[[Any], bool]:
    """A ``FrameEncoder.drop`` filter keeping every queued chunk but ``path``'s (chunks are keyed (path, positions))."""
    return lambda key: key[0] != path


def embed_windows(tasks: Sequence[WindowTask], model: VideoTextModel, *, batch_size: int = 32,
                  decode_workers: int = 2, timeout_s: float = 300.0, max_rss_mb: float = 2048.0,
                  fn: Callable[[WindowTask], Iterator[WindowHeader | WindowChunk]] = decode_windows,
                  ) -> Iterator[tuple[WindowTask, WindowedVideo | None, str | None]]:
    """Decode every task's windows in supervised workers (``fn``) and encode their frames here, batched across
    videos; yield (task, video, error) per video as each is complete; an error reads ``status: reason`` and names
    the stage (``open``, ``decode`` or ``model``) in the reason. A video whose worker crashed on ``auto`` is retried
    on decord (``decode_in_workers``): its new header discards whatever the crashed attempt sent."""
    encoder = FrameEncoder(model, batch_size)
    videos: dict[str, _Video] = {}  # path -> the video being decoded; its queued chunks are keyed by path

    def encoded(key: tuple, feats: torch.Tensor | None, error: str | None) -> None:
        path, positions = key
        trim_heap()  # a chunk's frames were freed: give their pages back (see trim_heap)
        video = videos[path]
        video.encoded += 1
        if error is None and video.error is None:
            assert feats is not None, "FrameEncoder.ready gives embeddings wherever it gives no error"
            try:
                video.states.append(model.state(model.window_features(feats, positions)))  # (w, L, E) -> (w, ...)
            except Exception as e:  # noqa: BLE001 - a pooling failure is this video's model error
                error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        if error is not None and video.error is None:
            video.error = f"error: model: {error}"

    def finished() -> Iterator[tuple[WindowTask, WindowedVideo | None, str | None]]:
        for path, video in list(videos.items()):
            if video.decoded and video.encoded == video.sent:
                del videos[path]
                if video.error:
                    yield video.task, None, video.error
                else:
                    yield video.task, WindowedVideo(video.header.info, video.header.bounds, VideoState.cat(video.states),
                                                    video.warnings, video.poster), None

    workers = max(1, min(decode_workers, len(tasks)))
    for task, outcome in decode_in_workers(list(tasks), num_workers=workers, timeout_s=timeout_s,
                                           max_rss_mb=max_rss_mb, fn=fn):
        path = task.path
        if outcome.status == "part" and isinstance(outcome.result, WindowHeader):  # (re)start: forget any earlier
            encoder.drop(_other_than(path))  # attempt's queued chunks
            videos[path] = _Video(task, outcome.result)
        elif outcome.status == "part":
            video, chunk = videos[path], outcome.result
            video.sent += 1
            video.poster = chunk.poster or video.poster
            positions = torch.from_numpy(chunk.positions)
            encoder.add((path, positions), model.window_frames(chunk.frames, positions))
        elif outcome.status == "ok":
            videos[path].decoded, videos[path].warnings = True, tuple(outcome.result)
        else:
            videos.pop(path, None)
            encoder.drop(_other_than(path))
            yield task, None, f"{outcome.status}: {outcome.error}"
        for key, feats, error in encoder.ready():
            encoded(key, feats, error)
        yield from finished()
    for key, feats, error in encoder.ready(flush=True):
        encoded(key, feats, error)
    yield from finished()
