"""decord backend, and the rule for when its frame indices can be trusted.

decord is known to return frames about one GOP early on MPEG-4 Part 2 AVIs with B-frames (decord#195), to hang or
crash on containers whose headers over-report frames (decord#373), and to follow playlists to other files.
``decord_trusted`` judges a file from PyAV's packet index: decord agrees with PyAV where the container's timestamps are
presentation times and decord counts exactly the frames that are present.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .pyav_reader import PyAVReader, scaled_size
from .reader import MAX_PIXELS, VideoDecodeError, VideoInfo, VideoReader


def import_decord() -> Any:
    try:
        import decord
    except ImportError:
        raise ImportError("the decord backend needs decord: pip install decord") from None
    decord.bridge.set_bridge("native")
    return decord


def decord_trusted(pyav: PyAVReader) -> tuple[bool, str]:
    """Whether decord's frame i is PyAV's frame i for this file, judged from PyAV's probe (no decoding)."""
    if not pyav._indexed:
        return False, f"{pyav.info.container}/{pyav.info.codec} timestamps are not a presentation index"
    if pyav.warnings:
        return False, "the file's header and packets disagree"
    return True, ""  # decord applies the display rotation itself (tested equal to PyAV's corrected frames)


class DecordReader(VideoReader):
    def __init__(self, path: Path, *, resize: int | None = None, max_pixels: int = MAX_PIXELS,
                 expected: PyAVReader | None = None):
        """``expected``: PyAV's probe of the same file, whose frame count decord must match."""
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
            raise VideoDecodeError(self.path, f"decord cannot open: {' '.join(str(e).split())[:200]}") from None
        if shape[0] * shape[1] > max_pixels:
            raise VideoDecodeError(self.path, f"frame size {shape[1]}x{shape[0]} is over the {max_pixels}-pixel limit")
        if expected is not None and n != expected.info.num_frames:
            raise VideoDecodeError(self.path, f"decord counts {n} frames where {expected.info.num_frames} are present")
        self.timestamps = stamps[:, 0].astype(np.float64) - float(stamps[0, 0])
        duration = float(stamps[-1, 1] - stamps[0, 0])
        fps = n / duration if duration > 0 else float(self._vr.get_avg_fps())
        self.num_frames, self.duration = n, duration
        self.info = VideoInfo(self.path, "decord", n, fps, shape[0], shape[1], expected.info.rotation if expected else 0,
                              expected.info.codec if expected else "", expected.info.container if expected else "",
                              duration)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._vr.get_batch(indices.tolist()).asnumpy()
        except Exception as e:  # decord raises bare DECORDError/RuntimeError subclasses from C++
            raise VideoDecodeError(self.path, f"decord failed: {' '.join(str(e).split())[:160]}") from None

    def close(self) -> None:
        self._vr = None
