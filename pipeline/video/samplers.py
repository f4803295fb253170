"""Frame samplers: pure functions from a video's length (or its frame timestamps) to frame indices. No I/O.

Conventions: indices are int64 numpy arrays into the decoder's frame order; ``timestamps`` are seconds per frame
(non-decreasing, from ``VideoReader.timestamps``), so time-based samplers are uniform in *time* even on
variable-frame-rate video. Videos shorter than a sampler needs follow ``short``: ``"loop"`` wraps around,
``"repeat_last"`` holds the last frame, ``"error"`` raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["test", "train"]
ShortPolicy = Literal["loop", "repeat_last", "error"]
SHORT_POLICIES = ("loop", "repeat_last", "error")
FrameChoice = Literal["exact", "keyframes"]
# which frames a sampling's instants take: exactly theirs, or the keyframes nearest them (decoded alone: a fraction of
# the work, not the same frames; video2dataset and search engines index keyframes so)
FRAME_CHOICES: tuple[FrameChoice, ...] = ("exact", "keyframes")
FRAME_CHOICE_HELP = ("exact: the sampled frames themselves; keyframes: the keyframes nearest them, decoded alone "
                     "(several times faster, approximate; a video with fewer keyframes than {} is decoded exactly, "
                     "with a warning)")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} ({value}) must be > 0")


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def segment_indices(num_frames: int, num_segments: int, *, mode: Mode = "test",
                    seed: int | np.random.Generator | None = None) -> np.ndarray:
    """TSN sampling over ``num_segments`` equal segments: the middle frame of each (test), or a random frame of each
    (train, seeded). Test index i is ``floor((i + 0.5) * num_frames / num_segments)``."""
    _check_positive(num_frames=num_frames, num_segments=num_segments)
    i = np.arange(num_segments)
    if mode == "test":
        return np.floor((i + 0.5) * num_frames / num_segments).astype(np.int64)
    if mode != "train":
        raise ValueError(f"mode {mode!r}: choose 'test' or 'train'")
    start = np.floor(i * num_frames / num_segments).astype(np.int64)
    end = np.maximum(np.floor((i + 1) * num_frames / num_segments).astype(np.int64), start + 1)  # exclusive
    return _rng(seed).integers(start, end).astype(np.int64)


def apply_short_policy(indices: np.ndarray, num_frames: int, short: ShortPolicy) -> np.ndarray:
    """Map indices at or past ``num_frames`` back into range by the policy."""
    if short not in SHORT_POLICIES:
        raise ValueError(f"short {short!r}: choose one of {', '.join(SHORT_POLICIES)}")
    if indices.size == 0 or indices.max() < num_frames:
        return indices
    if short == "error":
        raise ValueError(f"video has {num_frames} frames but the sampler needs index {int(indices.max())}")
    return indices % num_frames if short == "loop" else np.minimum(indices, num_frames - 1)


def dense_indices(num_frames: int, *, clip_len: int, frame_interval: int = 1, num_clips: int = 1, mode: Mode = "test",
                  seed: int | np.random.Generator | None = None, short: ShortPolicy = "loop") -> np.ndarray:
    """(num_clips, clip_len) dense clips of ``clip_len`` frames ``frame_interval`` apart.

    Test: clip starts evenly spread, each centred in its share of the valid start range. Train: random starts.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, frame_interval=frame_interval, num_clips=num_clips)
    span = (clip_len - 1) * frame_interval + 1
    room = max(num_frames - span + 1, 1)  # number of valid start positions
    if mode == "test":
        starts = np.floor((np.arange(num_clips) + 0.5) * room / num_clips).astype(np.int64)
    elif mode == "train":
        starts = _rng(seed).integers(0, room, size=num_clips).astype(np.int64)
    else:
        raise ValueError(f"mode {mode!r}: choose 'test' or 'train'")
    clips = starts[:, None] + np.arange(clip_len)[None, :] * frame_interval  # (num_clips, clip_len)
    return apply_short_policy(clips, num_frames, short)


TIME_TOLERANCE = 1e-6  # relative (at least 1 us): a timestamp this close to t counts as t


def nearest_keyframes(indices: np.ndarray, keyframes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Each frame index -> the keyframe nearest it in time (the earlier one on a tie); any shape is kept."""
    keys = np.asarray(keyframes, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64)
    t, key_t = timestamps[idx], timestamps[keys]
    after = np.clip(np.searchsorted(key_t, t, side="left"), 0, len(keys) - 1)  # the first keyframe at or after
    before = np.clip(after - (key_t[after] > t), 0, len(keys) - 1)  # the last keyframe at or before
    return np.where(key_t[after] - t < t - key_t[before], keys[after], keys[before])


def time_to_index(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The frame on screen at each time: the last frame whose timestamp is <= t, a timestamp within
    ``TIME_TOLERANCE`` of t counting as t. Timestamps are pts * time_base in floating point (an MKV's 1400 * 0.001 is
    1.4000000000000001; decord's are float32), so without it a sample at a frame's own time can take the frame before
    (fps sampling at a video's own rate took 10 of 100 frames' predecessors; far less than a frame apart: at one hour,
    3.6 ms)."""
    times = np.asarray(times, dtype=np.float64)
    idx = np.searchsorted(timestamps, times + TIME_TOLERANCE * np.maximum(1.0, np.abs(times)), side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1).astype(np.int64)


def uniform_time_indices(timestamps: np.ndarray, num_samples: int, duration: float | None = None,
                         start: float = 0.0) -> np.ndarray:
    """The frame shown at the middle of each of ``num_samples`` equal time segments of [start, start + duration)."""
    _check_positive(num_samples=num_samples)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if duration is None:
        duration = _duration(timestamps)
    times = start + (np.arange(num_samples) + 0.5) * duration / num_samples
    return time_to_index(timestamps, times)


def fps_indices(timestamps: np.ndarray, frames_per_second: float, duration: float | None = None) -> np.ndarray:
    """``frames_per_second`` frames per second of video time: the frame on screen at t = 0, 1/k, 2/k, ..."""
    _check_positive(frames_per_second=frames_per_second)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if duration is None:
        duration = _duration(timestamps)
    count = max(1, int(np.ceil(duration * frames_per_second - 1e-9)))
    return time_to_index(timestamps, np.arange(count) / frames_per_second)


def _duration(timestamps: np.ndarray) -> float:
    """Length covered by the frames: last timestamp plus one typical frame interval."""
    if len(timestamps) < 2:
        return 1.0
    return float(timestamps[-1] - timestamps[0] + np.median(np.diff(timestamps)))


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    indices: np.ndarray


def sliding_windows(timestamps: np.ndarray, *, window_s: float, stride_s: float, frames_per_window: int,
                    duration: float | None = None) -> list[Window]:
    """Windows of ``window_s`` seconds every ``stride_s`` seconds covering the whole video; the last one ends at the
    video's end. Each holds ``frames_per_window`` time-uniform frames. A video shorter than one window gives one
    window over all of it."""
    _check_positive(window_s=window_s, stride_s=stride_s, frames_per_window=frames_per_window)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if duration is None:
        duration = _duration(timestamps)
    return [Window(s, e, uniform_time_indices(timestamps, frames_per_window, duration=e - s, start=s))
            for s, e in window_bounds(duration, window_s, stride_s)]


MIN_TAIL = 0.05  # of a window: the end that the windows every stride leave uncovered, below which no window is added


def window_bounds(duration: float, window_s: float, stride_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of ``sliding_windows``: every ``stride_s`` seconds, the last one ending at the video's end;
    unless the end left over is under ``MIN_TAIL`` of a window (a 4.004 s video gave windows 0-4 and 0.004-4.004 s,
    one window twice): then the windows stop where the stride puts them, and a video at most that much longer than
    one window is one window over all of it."""
    if duration <= window_s * (1 + MIN_TAIL):
        return [(0.0, float(duration))]
    last = duration - window_s
    starts = list(np.arange(0.0, last, stride_s))
    if not starts or starts[-1] < last - MIN_TAIL * window_s:  # a sliver of a tail is no window of its own
        starts.append(last)
    return [(float(s), float(s + window_s)) for s in starts]


def multi_view_indices(num_frames: int, *, num_clips: int, clip_len: int, frame_interval: int = 1,
                       short: ShortPolicy = "loop") -> np.ndarray:
    """(num_clips, clip_len) temporal views for multi-view testing; spatial views are taken by the transform."""
    return dense_indices(num_frames, clip_len=clip_len, frame_interval=frame_interval, num_clips=num_clips,
                         mode="test", short=short)


SAMPLING_KINDS = ("segments", "uniform_time", "dense", "fps", "all", "windows")


@dataclass(frozen=True)
class Sampling:
    """A picklable choice of sampler and its settings, applied once a video's length is known.

    ``segments``: TSN test mode, ``num_frames`` frames; ``uniform_time``: ``num_frames`` frames uniform in time (VFR
    safe); ``dense``: ``num_clips`` × ``clip_len`` frames ``frame_interval`` apart; ``fps``: ``fps`` frames a second;
    ``all``: every frame (the CLIP paper's all-frames protocol); ``windows``: ``sliding_windows`` of ``window_s``
    seconds every ``stride_s``, ``num_frames`` time-uniform frames each, as (windows, num_frames).
    """

    kind: str = "segments"
    num_frames: int = 8
    clip_len: int = 8
    frame_interval: int = 1
    num_clips: int = 1
    fps: float = 1.0
    short: ShortPolicy = "loop"
    window_s: float = 4.0
    stride_s: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLING_KINDS:
            raise ValueError(f"sampling kind {self.kind!r}: choose one of {', '.join(SAMPLING_KINDS)}")
        _check_positive(num_frames=self.num_frames, clip_len=self.clip_len, frame_interval=self.frame_interval,
                        num_clips=self.num_clips, fps=self.fps, window_s=self.window_s, stride_s=self.stride_s)
        if self.short not in SHORT_POLICIES:
            raise ValueError(f"short {self.short!r}: choose one of {', '.join(SHORT_POLICIES)}")

    @classmethod
    def views(cls, num_frames: int, clips: int = 1, frame_interval: int = 1) -> Sampling:
        """The temporal views of a classify or benchmark run: one TSN clip of ``num_frames`` (one from the middle of
        each segment), or ``clips`` evenly spread dense clips of ``num_frames`` frames ``frame_interval`` apart."""
        if clips == 1:
            return cls("segments", num_frames=num_frames)
        return cls("dense", clip_len=num_frames, num_clips=clips, frame_interval=frame_interval)

    @property
    def clip_frames(self) -> int | None:
        """Frames per clip (per window, per dense clip), or None where a video's length decides (fps, all)."""
        if self.kind in ("fps", "all"):
            return None
        return self.clip_len if self.kind == "dense" else self.num_frames

    def indices(self, num_frames: int, timestamps: np.ndarray, duration: float | None = None) -> np.ndarray:
        if self.kind == "segments":
            return segment_indices(num_frames, self.num_frames)
        if self.kind == "uniform_time":
            return uniform_time_indices(timestamps, self.num_frames, duration=duration)
        if self.kind == "fps":
            return fps_indices(timestamps, self.fps, duration=duration)
        if self.kind == "all":
            return np.arange(num_frames, dtype=np.int64)
        if self.kind == "windows":
            windows = sliding_windows(timestamps, window_s=self.window_s, stride_s=self.stride_s,
                                      frames_per_window=self.num_frames, duration=duration)
            return np.stack([w.indices for w in windows])  # (W, num_frames)
        return dense_indices(num_frames, clip_len=self.clip_len, frame_interval=self.frame_interval,
                             num_clips=self.num_clips, short=self.short)
