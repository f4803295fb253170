"""Video decoding: one small interface over two backends (PyAV, decord), one typed error, strict input checks.

``open_video(path, backend="auto" | "pyav" | "decord", resize=None, stream=None)`` returns a ``VideoReader``:
``info`` (frame count, fps, duration, display size, rotation, codec, stream), ``timestamps`` (seconds, one per frame),
``read_frames(indices) -> uint8 (T, H, W, 3)`` NumPy RGB in the order asked for (``get_frames``: the same as a torch
tensor; torch is imported only there, so decode workers never load it), and ``warnings`` (FFmpeg decode errors and
header/stream disagreements met so far: best-effort frames are never returned silently).

Frame index i means the i-th frame that sequential decoding with PyAV yields, in presentation order. The PyAV backend
honours that exactly (keyframe seeks on a packet index where timestamps are trustworthy, a sequential pass where they
are not), and it is what ``auto`` uses: benchmarks/bench_decode.py compares its speed with decord's (the README has
the figures), and decord returns wrong frames on MPEG-4 Part 2 AVIs with B-frames. ``auto``
falls back to decord only when PyAV cannot open a file; ``decord`` can be asked for, and is checked against PyAV's
frame count and warned about where its frames are known to be wrong.
A file's video stream is the one FFmpeg picks (``av_find_best_stream``, never cover art) unless ``stream`` names one by
its container index; decord cannot be told a stream and decodes only the one its own FFmpeg picks.
Decoding in this process has no timeout: jobs decode through ``decode_in_workers`` (supervised processes, see
``supervisor``) for deadlines and crash isolation.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, overload

import numpy as np

from . import BACKENDS, Backend, Engine
from .decord_reader import DecordReader, decord_stream, decord_trusted
from .pyav_reader import PyAVReader
from .reader import MAX_PIXELS, DecodedClip, VideoDecodeError, VideoOpenError, VideoReader, check_file
from .samplers import FrameChoice, Sampling, nearest_keyframes
from .supervisor import Outcome, WorkerPool


def open_video(path: str | Path, backend: Backend = "auto", *, resize: int | None = None,
               max_pixels: int = MAX_PIXELS, threads: int = 1, stream: int | None = None) -> VideoReader:
    """Open ``path`` for frame-accurate random access.

    ``resize`` caps the short side: larger frames are scaled down in the decoder (a clip's memory is then bounded
    whatever the source resolution); smaller ones are left alone. ``threads`` > 1 lets the PyAV backend decode runs
    of far-apart targets in parallel (worth it where cores are idle). ``stream`` is the container's index of the video
    stream to decode (as ffprobe numbers them; ``info.stream`` says which was used); None takes FFmpeg's choice.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if resize is not None and resize < 1:
        raise ValueError(f"resize ({resize}) must be a positive short-side length or None")
    if threads < 1:
        raise ValueError(f"threads ({threads}) must be >= 1")
    path = check_file(path)
    if backend == "decord":
        return _open_decord(path, resize=resize, max_pixels=max_pixels, stream=stream)
    try:
        return PyAVReader(path, resize=resize, max_pixels=max_pixels, threads=threads, stream=stream)
    except VideoOpenError as e:
        if backend == "pyav" or stream is not None:  # decord could not be told which stream to decode
            raise
        try:  # auto: FFmpeg (through PyAV) could not open the container; decord's own FFmpeg build may
            reader = DecordReader(path, resize=resize, max_pixels=max_pixels)
        except (VideoDecodeError, ImportError):
            raise e from None
        reader.warnings.append(f"auto: PyAV could not open the file ({e.reason}); decoded with decord")
        return reader


def _open_decord(path: Path, *, resize: int | None, max_pixels: int, stream: int | None) -> DecordReader:
    """decord on the stream its FFmpeg picks, checked against PyAV's probe of that same stream."""
    theirs, best = decord_stream(path)
    if stream is not None and stream != theirs:
        raise VideoDecodeError(path, f"decord decodes only stream {theirs} (its FFmpeg's choice), not stream {stream}; "
                                     "use backend pyav or auto to choose a stream")
    with PyAVReader(path, resize=resize, max_pixels=max_pixels, stream=theirs) as pyav:  # decord is checked against it
        reader = DecordReader(path, resize=resize, max_pixels=max_pixels, expected=pyav)
        trusted, why = decord_trusted(pyav)
    if not trusted:
        reader.warnings.append(f"decord may return wrong frames for this file ({why}); prefer pyav or auto")
    if theirs != best:
        reader.warnings.append(f"decord decodes stream {theirs}, where FFmpeg (and pyav or auto) would pick stream "
                               f"{best}: decord's FFmpeg 4.1 ignores the default flag")
    return reader


@dataclass(frozen=True)
class DecodeRequest:
    """One video to decode: where, how to choose frames, which backend, an optional cap on the short side, and an
    optional video stream (container index; None takes FFmpeg's choice)."""

    path: str
    sampling: Sampling
    backend: Backend = "auto"
    resize: int | None = None
    threads: int = 1
    stream: int | None = None
    frame_choice: FrameChoice = "exact"  # keyframes: the keyframes nearest the sampled frames (keyframe_choice)


def keyframe_choice(reader: VideoReader, indices: np.ndarray, needed: int, what: str) -> np.ndarray:
    """``indices`` moved to the keyframes nearest them where the reader knows its keyframes and has at least
    ``needed`` of them (one per ``what``); else the exact indices, and a warning on the reader says why."""
    keys = reader.keyframes
    if keys is None or len(keys) < needed:
        found = "no keyframe index" if keys is None else f"{len(keys)} keyframe{'s' * (len(keys) != 1)}"
        reader.warn(f"keyframe sampling: {found} for {needed} {what}; decoded the exact frames instead")
        return indices
    return nearest_keyframes(indices, keys, reader.timestamps)


def decode_request(request: DecodeRequest) -> DecodedClip:
    """Open, sample, decode and close: the unit of work a decode worker runs."""
    with open_video(request.path, request.backend, resize=request.resize, threads=request.threads,
                    stream=request.stream) as reader:
        idx = request.sampling.indices(reader.num_frames, reader.timestamps, reader.duration)
        if request.frame_choice == "keyframes":
            idx = keyframe_choice(reader, idx, len(np.unique(idx)), "sampled frames")
        frames = reader.read_frames(idx.reshape(-1))  # NumPy: a decode worker never loads torch
        return DecodedClip(frames, idx, reader.timestamps[idx], reader.info, tuple(reader.warnings))


class DecodeTask(Protocol):
    """What ``decode_in_workers`` needs of a task: a frozen dataclass naming its file and its backend, so that a
    crashed ``auto`` attempt can be rerun as ``dataclasses.replace(task, backend="decord")``."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # what dataclasses.replace asks of its argument

    @property
    def path(self) -> str: ...

    @property
    def backend(self) -> Backend: ...


TaskT = TypeVar("TaskT", bound=DecodeTask)
MAX_LOST_RERUNS = 3  # reruns of a task whose machine was lost (Ray); after them its crash is an ordinary crash


class DecodeWorkers:
    """Supervised decode workers with their retries (the arguments are ``decode_in_workers``'), for a caller that
    adds and withdraws tasks while they run: ``run`` yields what ``decode_in_workers`` yields; ``submit_next(tasks)``
    runs more tasks next, in the order given, ahead of every task waiting (a long video's header asks for its other
    time ranges); ``withdraw(keep)``: the tasks ``keep`` rejects, waiting or running, stop and send nothing more.
    ``pool`` (a ``WorkerPool`` or ``RayPool``) is the context manager that stops the workers."""

    def __init__(self, fn: Callable[[Any], Any] | None = None, *, num_workers: int = 2, timeout_s: float = 120.0,
                 max_rss_mb: float = 2048.0, engine: Engine = "local",
                 rerun_lost: Callable[[Any, Any], Any] | None = None, ray_slots: int | None = None):
        pool_type: Any = WorkerPool
        if engine == "ray":
            from .ray_pool import RayPool as pool_type

            num_workers = ray_slots  # type: ignore[assignment]  # None: the cluster's CPUs
        self.pool = pool_type(fn or decode_request, num_workers=num_workers, timeout_s=timeout_s,
                              max_rss_mb=max_rss_mb)
        self.rerun_lost = rerun_lost
        self.withdraw = self.pool.withdraw
        self._by_id: dict[int, Any] = {}

    def submit_next(self, tasks: Sequence[Any]) -> None:
        for task in reversed(tasks):  # reversed: they start in the order given
            self._submit_first(task)

    def _submit_first(self, task: Any) -> int:
        task_id = self.pool.submit(task, first=True)
        self._by_id[task_id] = task
        return task_id

    def run(self, requests: Sequence[Any]) -> Iterator[tuple[Any, Outcome]]:
        self._by_id = dict(enumerate(requests))
        first_parts: dict[int, Any] = {}  # task_id -> the first part it sent (a window task's header)
        lost: dict[int, int] = {}  # task_id -> how many of its attempts lost their node
        for outcome in self.pool.map(requests):
            request = self._by_id[outcome.task_id]
            if outcome.status == "part":
                first_parts.setdefault(outcome.task_id, outcome.result)
            first = first_parts.pop(outcome.task_id, None) if outcome.status != "part" else None
            if outcome.node_lost and lost.get(outcome.task_id, 0) < MAX_LOST_RERUNS:
                again = self.rerun_lost(request, first) if self.rerun_lost else request
                lost[self._submit_first(again)] = lost.get(outcome.task_id, 0) + 1
                continue
            if outcome.status == "crash" and request.backend == "auto":
                self._submit_first(dataclasses.replace(request, backend="decord"))
                continue
            yield request, outcome


@overload
def decode_in_workers(requests: Sequence[DecodeRequest], *, num_workers: int = ..., timeout_s: float = ...,
                      max_rss_mb: float = ..., fn: None = None, engine: Engine = ...,
                      ) -> Iterator[tuple[DecodeRequest, Outcome]]: ...


@overload
def decode_in_workers(requests: Sequence[TaskT], *, num_workers: int = ..., timeout_s: float = ...,
                      max_rss_mb: float = ..., fn: Callable[[TaskT], Any], engine: Engine = ...,
                      rerun_lost: Callable[[TaskT, Any], TaskT] | None = ..., ray_slots: int | None = ...,
                      ) -> Iterator[tuple[TaskT, Outcome]]: ...


def decode_in_workers(requests: Sequence[TaskT], *, num_workers: int = 2, timeout_s: float = 120.0,
                      max_rss_mb: float = 2048.0, fn: Callable[[TaskT], Any] | None = None, engine: Engine = "local",
                      rerun_lost: Callable[[TaskT, Any], TaskT] | None = None, ray_slots: int | None = None,
                      ) -> Iterator[tuple[TaskT, Outcome]]:
    """Decode each request (with ``fn``, default ``decode_request``, which takes ``DecodeRequest``s) in a supervised
    worker; yields (request, outcome) as each ends. A request on the ``auto`` backend (PyAV) whose worker crashed is
    retried next on decord, whose own FFmpeg build may get through; the retried result carries decord's warnings.
    ``engine``: ``local`` worker processes (``num_workers`` of them), or Ray tasks on the connected cluster
    (``ray_pool.RayPool``: ``ray_slots`` at once, None: as many as it has CPUs), with the same outcomes. A task
    whose Ray node was lost runs again, up to ``MAX_LOST_RERUNS`` times, as ``rerun_lost(request, its first part)``
    says (default: as it was); its outcomes until then are superseded, as a crashed attempt's are. A caller that
    adds or withdraws tasks while they run uses ``DecodeWorkers``."""
    workers = DecodeWorkers(fn, num_workers=num_workers, timeout_s=timeout_s, max_rss_mb=max_rss_mb, engine=engine,
                            rerun_lost=rerun_lost, ray_slots=ray_slots)
    with workers.pool:
        yield from workers.run(requests)
