"""Sliding windows of videos, streamed out of decode workers in bounded chunks and pooled (the tag job's stages).

    worker:      (``window_decode``, no torch) open -> windows (video.samplers.sliding_windows) -> per chunk of
                 windows: decode its distinct frames once -> resize and crop to the model's size (uint8 NumPy) ->
                 yield (with the video's poster, a small JPEG of the middle window's middle frame, in the chunk that
                 holds it)
    this process: normalise -> encode, batched across videos (frame_features.FrameEncoder) -> each window's state
                 (``model_interface``: its frames pooled, or X-CLIP's window encoded whole)

Memory is bounded whatever the video's length: a chunk holds at most ``chunk_mb`` of decoded frames, and the worker
is never more than one chunk ahead of the model (``pipeline.video.supervisor`` streams generator tasks). Overlapping windows
share frames (4 s windows every 2 s, 8 frames each, sample the same instants), so each distinct frame is decoded and
shipped once, and ``positions`` says which frames make up each window; a per-frame model encodes each once too (X-CLIP
encodes each window's frames together). Frames cross to the model's
process already resized and cropped (uint8, S x S x 3), not at the decoder's size; ``ClipTransform.normalize``
finishes them there (the resize is Pillow's: see ``window_decode`` for how its pixels compare).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.video.open import decode_in_workers
from pipeline.video.reader import VideoInfo
from pipeline.video.supervisor import trim_heap

from .frame_features import FrameEncoder
from .model_interface import VideoState, VideoTextModel
from .window_decode import (
    FrameGeometry,
    StageError,
    WindowChunk,
    WindowHeader,
    WindowTask,
    chunk_ranges,
    decode_windows,
)

__all__ = ["FrameGeometry", "StageError", "WindowChunk", "WindowHeader", "WindowTask", "WindowedVideo", "chunk_ranges",
           "decode_windows", "embed_windows"]

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
            frames = torch.from_numpy(chunk.frames).permute(0, 3, 1, 2)  # (U, 3, S, S) uint8
            encoder.add((path, positions), model.window_frames(frames, positions))
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
