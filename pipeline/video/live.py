"""Live sources for ``watch``: frames as they arrive from a camera, a network stream or a file played at its own pace,
and the sliding windows they fill.

``LiveSource`` yields ``LiveFrame``s (stream time, arrival time, RGB) and, where a live source stalls or drops,
a ``Gap`` before it reopens the source with backoff; a file ends at its end. ``WindowSampler`` places windows as
``samplers.sliding_windows`` does (window n spans [n * stride, n * stride + window); its frames are those on screen at
the middle of each of ``num_frames`` equal parts), but online: an instant is settled by the first frame after it, so a
window is complete one frame after its last instant. It holds only the previous frame and the open windows' frames.
Never imports torch or clip_model.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .containers import best_video_stream, display_rgb, import_av, reason
from .samplers import TIME_TOLERANCE

LIVE_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "srt://", "tcp://", "rtp://")
OPEN_TIMEOUT_S = 10.0  # a source that does not open in this long is retried (live) or refused (file)
READ_TIMEOUT_S = 5.0  # a live source that sends no data for this long has stalled: a gap, then a reopen
LIVE_PROBE_US = 500_000  # microseconds of a live stream FFmpeg reads to find its streams
MAX_BACKOFF_S = 8.0  # reopen attempts wait 0.5, 1, 2, 4, 8, 8, ... seconds


class LiveSourceError(RuntimeError):
    """A source that cannot be watched; str() is one line naming it."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class LiveFrame:
    number: int  # frames seen since the source first opened, across reopenings
    connection: int  # 0 for the first opening, +1 for each reopening
    time_s: float  # stream seconds since this connection's first frame
    arrived: float  # wall-clock time (time.time()) when it was decoded
    rgb: np.ndarray = field(repr=False)  # (H, W, 3) uint8


@dataclass(frozen=True)
class Gap:
    """The source stalled or dropped at ``start`` (wall clock) and sent frames again at ``end``."""

    start: float
    end: float
    reason: str


def is_live(source: str) -> bool:
    return source.startswith(LIVE_SCHEMES) or source.startswith("/dev/video")


class LiveSource:
    """Decoded frames of ``source`` as they come. A file (not ``realtime``) is read as fast as it decodes; with
    ``realtime`` it is paced by its timestamps. A live source that stalls (``READ_TIMEOUT_S``) or ends is reopened
    with backoff and the time without frames is a ``Gap``; ``stop`` ends the iteration within a read timeout."""

    def __init__(self, source: str, *, realtime: bool = False, stop: threading.Event | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S, resize: int | None = None):
        """``resize`` caps the frames' short side in the decoder's scaler, as ``PyAVReader`` does (AREA)."""
        self.source, self.realtime, self.stop, self.resize = source, realtime, stop or threading.Event(), resize
        self.live, self.read_timeout_s = is_live(source), read_timeout_s
        if not self.live and not Path(source).is_file():
            raise LiveSourceError(source, "no such file, and not a stream URL (rtsp://, udp://, http://, ...) or a "
                                          "camera (/dev/video0)")
        self.av = import_av()
        self.reopened = 0
        if not self.live:  # a file that cannot be opened is said at once (a stream is opened by the iteration)
            try:
                self._open().close()
            except (self.av.FFmpegError, OSError) as e:
                raise LiveSourceError(source, f"cannot open: {reason(e)}") from None

    def _open(self) -> Any:
        kwargs: dict[str, Any] = {"timeout": (OPEN_TIMEOUT_S, self.read_timeout_s)}
        if self.source.startswith("/dev/video"):
            kwargs["format"] = "v4l2"
        if not self.live:
            kwargs["options"] = {"protocol_whitelist": "file"}
        else:  # start from what comes first: probe half a second of a stream, not FFmpeg's default five
            kwargs["options"] = {"analyzeduration": str(LIVE_PROBE_US), "fflags": "nobuffer"}
        container = self.av.open(self.source, **kwargs)
        if best_video_stream(container) is None:
            container.close()
            raise LiveSourceError(self.source, "no video stream")
        return container

    def __iter__(self) -> Iterator[LiveFrame | Gap]:
        number, backoff, lost_at = 0, 0.5, None
        while not self.stop.is_set():
            try:
                container = self._open()
            except (self.av.FFmpegError, OSError) as e:
                if not self.live or self.reopened == 0:  # a source that never opened is a bad source
                    raise LiveSourceError(self.source, f"cannot open: {reason(e)}") from None
                lost_at = lost_at or time.time()
                self.stop.wait(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF_S)
                continue
            if lost_at is not None:
                yield Gap(lost_at, time.time(), "the stream stalled or dropped; reopened")
                lost_at = None
            connection, stalled = self.reopened, False
            try:
                stream = best_video_stream(container)
                first, started = None, time.monotonic()
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        if self.stop.is_set():
                            return
                        t = float(frame.time) if frame.time is not None else 0.0
                        first = t if first is None else first
                        if self.realtime:  # play at the file's pace: wait until this frame's time has come
                            self.stop.wait(max(0.0, (t - first) - (time.monotonic() - started)))
                        backoff = 0.5
                        yield LiveFrame(number, connection, t - first, time.time(), self._rgb(frame))
                        number += 1
            except self.av.FFmpegError as e:  # a read timeout or a broken stream: for a live source, a gap
                if not self.live:
                    raise LiveSourceError(self.source, f"decoding stopped: {reason(e)}") from None
                stalled = True
            finally:
                container.close()
            if not self.live:
                return
            # a read that timed out waited READ_TIMEOUT_S for data that never came (and the frames FFmpeg flushes
            # then arrive late): the gap began that long before
            lost_at = time.time() - (self.read_timeout_s if stalled else 0.0)
            self.reopened += 1


    def _rgb(self, frame: Any) -> np.ndarray:
        """RGB uint8 (H, W, 3) as ``PyAVReader`` gives it: scaled, and rotated for display (``display_rgb``)."""
        if getattr(self, "_reformatter", None) is None:
            self._reformatter = self.av.video.reformatter.VideoReformatter()
        return display_rgb(self._reformatter, frame, self.resize)


class WindowSampler:
    """Sliding windows over frames arriving in time order (see the module doc). ``push`` returns the windows a frame
    completes, each as (number, start_s, end_s, its num_frames LiveFrames); a new connection starts the windows
    again from its first frame."""

    def __init__(self, window_s: float, stride_s: float, num_frames: int):
        self.window_s, self.stride_s, self.num_frames = window_s, stride_s, num_frames
        self._connection: int | None = None
        self._next = 0  # the next window to open
        self._open: dict[int, list[LiveFrame | None]] = {}
        self._prev: LiveFrame | None = None

    def instants(self, n: int) -> np.ndarray:
        start = n * self.stride_s
        return start + (np.arange(self.num_frames) + 0.5) * self.window_s / self.num_frames

    def push(self, frame: LiveFrame) -> list[tuple[int, float, float, list[LiveFrame]]]:
        if frame.connection != self._connection:
            self._connection, self._next, self._open, self._prev = frame.connection, 0, {}, None
        t = frame.time_s
        while self._next * self.stride_s <= t + TIME_TOLERANCE * max(1.0, t):  # windows that have begun
            self._open[self._next] = [None] * self.num_frames
            self._next += 1
        done = []
        for n in list(self._open):
            slots = self._open[n]
            for k, instant in enumerate(self.instants(n)):
                # the frame before this one is on screen at every instant this one comes after
                if slots[k] is None and self._prev is not None and t > instant + TIME_TOLERANCE * max(1.0, instant):
                    slots[k] = self._prev
            if all(s is not None for s in slots):
                frames = [s for s in slots if s is not None]
                done.append((n, n * self.stride_s, n * self.stride_s + self.window_s, frames))
                del self._open[n]
        self._prev = frame
        return done
