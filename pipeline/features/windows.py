"""Sliding windows of videos, streamed out of decode workers in bounded chunks and pooled (the tag job's stages).

    worker:      (``window_decode``, no torch) open -> windows (video.samplers.sliding_windows) -> per chunk of
                 windows: decode its distinct frames once -> resize and crop to the model's size (uint8 NumPy) ->
                 yield (with the video's poster, a small JPEG of the middle window's middle frame, in the chunk that
                 holds it)
    this process: batched across videos (clip_features.CrossVideoBatcher) -> normalise, encode (here, or on Ray
                 encoder actors: ``encoders``) -> each window's state (``model.video_text``: its frames pooled, or
                 X-CLIP's window encoded whole)

Memory is bounded whatever the video's length: a chunk holds at most ``chunk_mb`` of decoded frames, and the worker
is never more than one chunk ahead of the model (``pipeline.video.supervisor`` streams generator tasks). Overlapping windows
share frames (4 s windows every 2 s, 8 frames each, sample the same instants), so each distinct frame is decoded and
shipped once, and ``positions`` says which frames make up each window; a per-frame model encodes each once too (X-CLIP
encodes each window's frames together). Frames cross to the model's
process already resized and cropped (uint8, S x S x 3), not at the decoder's size; ``ClipTransform.normalize``
finishes them there (the resize is Pillow's: see ``window_decode`` for how its pixels compare).

A long video is not left to one worker: its first worker names its time ranges (a minute or more each, at most
``split`` of them, which the tag job sets to its decode workers) and decodes the first; the other ranges go to the
next free workers, ahead of the videos still waiting. Each opens at the keyframe before its first window, and the
windows are put back in time order here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.model.runtime import RuntimeSettings
from pipeline.model.scorers import VideoState
from pipeline.model.video_text import VideoTextModel
from pipeline.video import Engine
from pipeline.video.open import DecodeWorkers
from pipeline.video.reader import VideoInfo
from pipeline.video.supervisor import Failure, Outcome, trim_heap

from .clip_features import CrossVideoBatcher
from .encoders import BatchEncoder, model_failure
from .window_decode import (
    FrameGeometry,
    StageError,
    WindowChunk,
    WindowHeader,
    WindowTask,
    chunk_ranges,
    decode_windows,
    lost_task,
    range_tasks,
)

__all__ = ["FrameGeometry", "StageError", "WindowChunk", "WindowHeader", "WindowTask", "WindowedVideo", "chunk_ranges",
           "decode_windows", "embed_windows", "WindowAssembly"]

@dataclass(frozen=True)
class WindowedVideo:
    info: VideoInfo
    bounds: tuple[tuple[float, float], ...]  # (start_s, end_s) per window
    windows: VideoState  # (W, ...): each window's unit vector (and X-CLIP's tokens)
    warnings: tuple[str, ...] = ()
    poster: bytes | None = None  # a small JPEG of the middle window's middle frame
    frame_s: np.ndarray | None = None  # (W, T) seconds of each window's frames (keyframes: the ones it took)


@dataclass(eq=False)
class _Video:
    task: WindowTask  # the whole video's attempt under way (a retry runs on another backend)
    header: WindowHeader  # that attempt's: every window's bounds, and the video's time ranges
    running: set[tuple[int, int]]  # time ranges whose worker has not finished
    split: bool  # this attempt, or an earlier one, cut the video into ranges: tasks of it may outlive it
    states: dict[int, VideoState] = field(default_factory=dict)  # a chunk's first window -> (w, ...) its states
    frame_s: dict[int, np.ndarray] = field(default_factory=dict)  # a chunk's first window -> (w, T) frame seconds
    queued: set[int] = field(default_factory=set)  # first windows of the chunks with the model
    warnings: list[str] = field(default_factory=list)
    poster: bytes | None = None
    failure: Failure | None = None

    def restart(self, window_range: tuple[int, int]) -> None:
        """Forget what an earlier attempt at this range sent (its chunks begin inside it)."""
        a, b = window_range
        self.states = {k: v for k, v in self.states.items() if not a <= k < b}
        self.frame_s = {k: v for k, v in self.frame_s.items() if not a <= k < b}
        self.queued = {k for k in self.queued if not a <= k < b}

    def note(self, warnings: Sequence[str]) -> None:
        """Each range reopens the file, so its warnings come once per range: keep one of each."""
        self.warnings += [w for w in warnings if w not in self.warnings]

    def result(self) -> WindowedVideo:
        states = [self.states[k] for k in sorted(self.states)]  # time order, whichever worker sent them
        windows = VideoState.cat(states)
        assert len(windows) == len(self.header.bounds), "every window is in exactly one chunk"
        frame_s = None
        if self.frame_s and len(self.frame_s) == len(self.states):  # (a decoder that sends no times: none)
            frame_s = np.concatenate([self.frame_s[k] for k in sorted(self.frame_s)])  # (W, T)
        return WindowedVideo(self.header.info, self.header.bounds, windows, tuple(self.warnings), self.poster, frame_s)


def _chunk_filter(path: str, window_range: tuple[int, int] | None = None) -> Callable[[Any], bool]:
    """A ``CrossVideoBatcher.drop`` filter: it drops ``path``'s queued chunks (keyed (path, first window, positions)), or
    only those of them that begin inside ``window_range``, and keeps every other."""
    a, b = window_range or (0, 1 << 62)
    return lambda key: key[0] != path or not a <= key[1] < b


Result = tuple[WindowTask, "WindowedVideo | None", "Failure | None"]  # per video: exactly one of the two is set


@dataclass
class StageCounts:
    """Frames through each stage so far, for a progress line: decoded (received from the workers), encoded; and
    where they are encoded (Ray encoder actors: each one's node id and device; none: this process)."""

    decoded_frames: int = 0
    encoded_frames: int = 0
    encoders: tuple[str, ...] = ()


class WindowAssembly:
    """What ``embed_windows`` keeps while workers decode: the videos under way (keyed by path, as their queued chunks
    are) and the encoder batching their frames across videos. ``take`` takes one worker outcome, a method per kind;
    ``encode`` runs the full batches; each returns the videos that are now complete or failed. It drives the split
    of long videos on the ``workers`` decoding them: a video's header asks for its other time ranges next, and once
    a split video is yielded, its tasks that still run or wait are withdrawn."""

    def __init__(self, model: VideoTextModel, batch_size: int, workers: DecodeWorkers,
                 counts: StageCounts | None = None, encoder: BatchEncoder | None = None):
        self.model, self.workers, self.counts = model, workers, counts or StageCounts()
        self.encoder = CrossVideoBatcher(model, batch_size, encoder)
        self.videos: dict[str, _Video] = {}

    def take(self, task: WindowTask, outcome: Outcome) -> Iterator[Result]:
        video = self._current(task)
        if outcome.status == "part" and isinstance(outcome.result, WindowHeader):
            self._header(task, video, outcome.result)
        elif video is None:  # failed before its header, or stale: a range of a failed, finished or restarted video
            if task.window_range is None and outcome.failure is not None:
                yield task, None, outcome.failure
            return
        elif outcome.status == "part":
            self._chunk(video, outcome.result)
        elif outcome.status == "ok":
            video.running.discard(task.window_range or video.header.ranges[0])
            video.note(outcome.result)
        else:  # this video's worker, or one of its ranges', failed: so does the video
            self._close(task.path)
            yield video.task, None, outcome.failure
        yield from self.encode()

    def encode(self, flush: bool = False) -> Iterator[Result]:
        """Run the encoder's full batches (all, with ``flush``); the videos complete or failed now."""
        for key, feats, failure in self.encoder.ready(flush=flush):
            self._encoded(key, feats, failure)
        for path, video in list(self.videos.items()):
            if not video.running and not video.queued:
                self._close(path)
                yield (video.task, None, video.failure) if video.failure else (video.task, video.result(), None)

    def _current(self, task: WindowTask) -> _Video | None:
        """The video this task's outcome belongs to, or None where it is stale (the video failed or finished, or its
        attempt was replaced by an unsplit retry)."""
        video = self.videos.get(task.path)
        if video is None or task.window_range is None:
            return video
        return video if task.window_range in video.running else None

    def _header(self, task: WindowTask, video: _Video | None, header: WindowHeader) -> None:
        path = task.path
        if task.window_range is None:  # the whole video (re)starts: forget any earlier attempt
            self.workers.submit_next(range_tasks(task, header))
            self.encoder.drop(_chunk_filter(path))
            split = len(header.ranges) > 1 or (video is not None and video.split)
            self.videos[path] = _Video(task, header, set(header.ranges), split)
        elif video is not None:  # one range (re)starts
            self.encoder.drop(_chunk_filter(path, task.window_range))
            video.restart(task.window_range)
            a, b = task.window_range
            if header.bounds != video.header.bounds:
                video.failure = Failure("error", "decode", (
                    f"windows {a}-{b}, reopened with {header.info.backend}, have other bounds than at the video's "
                    "first opening (the file changed while it was being tagged, or two decoders disagree on its "
                    "timestamps)"))
            elif header.info.backend != video.header.info.backend:
                video.note([f"windows {a}-{b} decoded with {header.info.backend} "
                            f"(the {video.header.info.backend} worker on them crashed)"])

    def _chunk(self, video: _Video, chunk: WindowChunk) -> None:
        video.poster = chunk.poster or video.poster
        # Ray hands results over read-only (zero-copy from its object store): such arrays are copied, others not
        positions = torch.from_numpy(np.require(chunk.positions, requirements="W"))
        frames = torch.from_numpy(np.require(chunk.frames, requirements="W")).permute(0, 3, 1, 2)  # (U, 3, S, S) uint8
        self.counts.decoded_frames += len(chunk.frames)
        if video.failure is None:
            if chunk.frame_s is not None:
                video.frame_s[chunk.first] = chunk.frame_s[chunk.positions]  # (w, T)
            video.queued.add(chunk.first)
            self.encoder.add((video.task.path, chunk.first, positions), self.model.window_frames(frames, positions))

    def _encoded(self, key: tuple, feats: torch.Tensor | None, failure: Failure | None) -> None:
        path, first, positions = key
        trim_heap()  # a chunk's frames were freed: give their pages back (see trim_heap)
        video = self.videos[path]
        video.queued.discard(first)
        if feats is not None:
            self.counts.encoded_frames += len(feats)
        if failure is None and video.failure is None:
            assert feats is not None, "CrossVideoBatcher.ready gives embeddings wherever it gives no failure"
            try:
                video.states[first] = self.model.state(self.model.window_features(feats, positions))  # (w, L, E)
            except Exception as e:  # noqa: BLE001 - a pooling failure is this video's model error
                failure = model_failure(e)
        if failure is not None and video.failure is None:
            video.failure = failure
            self.encoder.drop(_chunk_filter(path))  # encode no more of it
            video.queued.clear()

    def _close(self, path: str) -> None:
        video = self.videos.pop(path)
        self.encoder.drop(_chunk_filter(path))
        if video.split:  # tasks of its other ranges may still run or wait
            self.workers.withdraw(lambda task: task.path != path)


def embed_windows(tasks: Sequence[WindowTask], model: VideoTextModel, *, batch_size: int = 32,
                  decode_workers: int = 2, timeout_s: float = RuntimeSettings.decode_timeout_s,
                  max_rss_mb: float = 2048.0,
                  fn: Callable[[WindowTask], Iterator[WindowHeader | WindowChunk]] = decode_windows,
                  engine: Engine = "local", counts: StageCounts | None = None,
                  encoder: BatchEncoder | None = None, ray_slots: int | None = None) -> Iterator[Result]:
    """Decode every task's windows in supervised workers (``fn``) and encode their frames here, batched across
    videos; yield (task, video, failure) per video as each is complete (``Failure``: its status, the stage
    ``open``, ``decode`` or ``model``, and the reason).

    A long video's time ranges (``window_decode.time_ranges``, ``split`` per task) are decoded by several workers at
    once, ahead of the videos still waiting, and its windows put back in time order; it fails if any range fails.
    A video whose worker crashed on ``auto`` is retried on decord (``DecodeWorkers``): its new header discards
    whatever the crashed attempt sent, and what the crashed attempt's other ranges still send is ignored (a decord
    retry is never split). A range whose own worker crashed is retried alone the same way. Once a split video is
    yielded (done, or failed by one range), its tasks still running or waiting are withdrawn. ``engine``: where the
    decode workers run (``DecodeWorkers``: local processes, or Ray tasks on the connected cluster). ``counts``,
    if given, is kept up to date with the frames decoded and encoded so far (a progress line's stage rates).
    ``encoder``: where the frames are encoded (``encoders``: None is ``model`` in this process); ``ray_slots``: decode
    tasks in flight on Ray (None: the cluster's CPUs)."""
    if len({t.path for t in tasks}) != len(tasks):
        raise ValueError("embed_windows takes each path once: its chunks and ranges are keyed by path")
    num_workers = max(1, min(decode_workers, sum(t.split for t in tasks)))
    workers = DecodeWorkers(fn, num_workers=num_workers, timeout_s=timeout_s, max_rss_mb=max_rss_mb, engine=engine,
                            rerun_lost=lost_task, ray_slots=ray_slots)
    with workers.pool:
        assembly = WindowAssembly(model, batch_size, workers, counts, encoder)
        for task, outcome in workers.run(list(tasks)):
            yield from assembly.take(task, outcome)
    yield from assembly.encode(flush=True)
