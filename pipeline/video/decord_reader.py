"""decord backend, and the rule for when its frame indices can be trusted.

decord is known to return frames about one GOP early on MPEG-4 Part 2 AVIs with B-frames (decord#195), to hang or
crash on containers whose headers over-report frames (decord#373), and to follow playlists to other files.
``decord_trusted`` judges a file from PyAV's packet index: decord agrees with PyAV where the container's timestamps are
presentation times and decord counts exactly the frames that are present. decord decodes one stream only, the one its
own FFmpeg picks: ``decord_stream`` says which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .containers import best_video_stream, open_container, scaled_size
from .native_log import captured_stderr, native_message
from .pyav_reader import PyAVReader
from .reader import MAX_PIXELS, VideoDecodeError, VideoInfo, VideoReader


def import_decord() -> Any:
    try:
        import decord
    except ImportError:
        raise ImportError("the decord backend needs decord: pip install decord") from None
    decord.bridge.set_bridge("native")
    return decord


def decord_stream(path: Path) -> tuple[int, int]:
    """(the stream decord decodes, the stream FFmpeg picks today), as container stream indices.

    decord opens ``av_find_best_stream``'s choice in its bundled FFmpeg 4.1 (libavformat 58.20), which ranks streams as
    today's FFmpeg does except for the DEFAULT flag: on MP4 and MKV files whose second video stream alone is flagged
    default, decord decodes a first stream of higher bit rate where FFmpeg 8 (PyAV's) takes the second.
    """
    with open_container(path) as container:
        theirs, ours = best_video_stream(container, ignore_default=True), best_video_stream(container)
        if theirs is None or ours is None:
            raise VideoDecodeError(path, "only an attached picture (cover art), no video stream")
        return theirs.index, ours.index


def decord_trusted(pyav: PyAVReader) -> tuple[bool, str]:
    """Whether decord's frame i is PyAV's frame i for this file, judged from PyAV's probe (no decoding)."""
    if not pyav._indexed:
        return False, f"{pyav.info.container}/{pyav.info.codec} timestamps are not a presentation index"
    if "avi" in pyav.info.container.split(",") and pyav.reorders:  # decord#195: it mis-seeks on these
        return False, f"{pyav.info.container}/{pyav.info.codec} with B-frames, whose seeks decord gets wrong"
    if pyav.warnings:
        return False, "the file's header and packets disagree"
    return True, ""  # decord applies the display rotation itself (tested equal to PyAV's corrected frames)


class DecordReader(VideoReader):
    def __init__(self, path: Path, *, resize: int | None = None, max_pixels: int = MAX_PIXELS,
                 expected: PyAVReader | None = None):
        """``expected``: PyAV's probe of the stream decord decodes (``decord_stream``), whose frame count and size
        decord must match."""
        super().__init__()
        decord = import_decord()
        self.path = Path(path)
        kwargs: dict[str, Any] = {"ctx": decord.cpu(0), "num_threads": 0}
        if expected is not None:
            h, w = expected.info.height, expected.info.width
        else:
            h = w = 0
        try:
            str(self.path).encode("utf-8")
        except UnicodeEncodeError:
            raise VideoDecodeError(self.path, "decord cannot open paths that are not valid UTF-8") from None
        try:
            with captured_stderr() as logged:  # its FFmpeg's and its own log lines: into the error or the warnings
                if resize is not None:
                    if not h:
                        probe = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
                        h, w = probe[0].shape[:2]
                        del probe
                    h, w = scaled_size(h, w, resize)
                    kwargs.update(width=w, height=h)
                self._vr = decord.VideoReader(str(self.path), **kwargs)
                n = len(self._vr)
                shape = self._vr[0].shape
                stamps = self._vr.get_frame_timestamp(np.arange(n))
        except (RuntimeError, decord.DECORDError, IndexError) as e:
            said = next((line for line in logged if line.lower() not in str(e).lower() and "ERROR opening" not in line),
                        None)  # the FFmpeg line that says why (moov atom not found), where decord's message does not
            raise VideoDecodeError(self.path, f"decord cannot open: {native_message(str(e))[:200]}"
                                              + (f" (FFmpeg: {said[:120]})" if said else "")) from None
        self._note(logged)
        if shape[0] * shape[1] > max_pixels:
            raise VideoDecodeError(self.path, f"frame size {shape[1]}x{shape[0]} is over the {max_pixels}-pixel limit")
        if expected is not None and n != expected.info.num_frames:
            raise VideoDecodeError(self.path, f"decord counts {n} frames where stream {expected.info.stream} has "
                                              f"{expected.info.num_frames}")
        if expected is not None and resize is None and shape[:2] != (h, w):
            raise VideoDecodeError(self.path, f"decord decodes {shape[1]}x{shape[0]} frames where stream "
                                              f"{expected.info.stream} has {w}x{h}")
        self.timestamps = stamps[:, 0].astype(np.float64) - float(stamps[0, 0])
        duration = float(stamps[-1, 1] - stamps[0, 0])
        if not (np.all(np.diff(self.timestamps) >= 0) and 0 < duration < 1e7):  # decord's timestamps are garbage
            if expected is not None:  # where FFmpeg has no pts (B-frame AVIs): take PyAV's for the same stream
                self.timestamps, duration = np.array(expected.timestamps, dtype=np.float64), float(expected.duration)
            else:
                rate = float(self._vr.get_avg_fps()) or 25.0
                self.timestamps, duration = np.arange(n) / rate, n / rate
            self.warnings.append("decord gave no usable timestamps; frame times come from "
                                 + ("PyAV's index" if expected is not None else "the average frame rate"))
        fps = n / duration if duration > 0 else float(self._vr.get_avg_fps())
        self.num_frames, self.duration = n, duration
        self._info = VideoInfo(self.path, "decord", n, fps, shape[0], shape[1],
                               expected.info.rotation if expected else 0, expected.info.codec if expected else "",
                               expected.info.container if expected else "", duration,
                               expected.info.stream if expected else None)

    @property
    def info(self) -> VideoInfo:
        return self._info

    @property
    def keyframes(self) -> np.ndarray | None:
        with self._lock:
            return np.asarray(self._vr.get_key_indices(), dtype=np.int64)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        try:
            with captured_stderr() as logged:
                frames = self._vr.get_batch(indices.tolist()).asnumpy()
        except Exception as e:  # decord raises bare DECORDError/RuntimeError subclasses from C++
            raise VideoDecodeError(self.path, f"decord failed: {native_message(str(e))[:160]}") from None
        self._note(logged)
        return frames

    def _note(self, logged: list[str]) -> None:
        """decord's FFmpeg's log lines (decode errors, concealment) as warnings, as PyAV's decode errors are."""
        for line in logged:
            self.warn(f"decord's FFmpeg: {line[:160]}")

    def close(self) -> None:
        self._vr = None
