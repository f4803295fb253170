"""The reader interface every backend implements, what it returns, and the checks every file passes first.

``VideoReader``: ``info`` (frame count, fps, duration, display size, rotation, codec, the stream decoded),
``timestamps`` (seconds, one per frame), ``read_frames(indices) -> uint8 (T, H, W, 3)`` NumPy RGB in the order
asked for (``get_frames``: the same as a torch tensor; torch is imported only there, so decode workers never load
it), and ``warnings`` (FFmpeg decode errors and header/stream disagreements met so far: best-effort frames are never returned
silently).
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

if TYPE_CHECKING:  # torch is imported where frames become tensors, so a NumPy-only worker never loads it
    import torch

MAX_PIXELS = 7680 * 4320  # 8K UHD; larger frames are refused unless a resize is asked for (PyAV then scales on the fly)
SNIFF_BYTES = 4096
MAX_LOGGED_WARNINGS = 20  # a damaged file can fail on every packet: the first ones say what is wrong


class VideoDecodeError(RuntimeError):
    """A video cannot be decoded. ``path`` and ``reason`` are kept apart for error files; str() is one line."""

    stage = "decode"  # the stage a job records it in (supervisor.Failure)

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return type(self), (str(self.path), self.reason)


class VideoOpenError(VideoDecodeError):
    """FFmpeg could not open or parse the container (as opposed to a policy refusal such as an oversized frame)."""

    stage = "open"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    backend: str
    num_frames: int
    fps: float  # average frame rate: num_frames / duration where timestamps are known
    height: int  # display size, after rotation and any requested resize
    width: int
    rotation: int = 0  # degrees counter-clockwise applied to the coded frames (display matrix)
    codec: str = ""
    container: str = ""
    duration: float = 0.0  # seconds, first frame to the end of the last
    stream: int | None = None  # the container's stream index decoded, as ffprobe numbers them; None where unknown

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise VideoDecodeError(self.path, "no decodable video frames")


class VideoReader(ABC):
    path: Path
    num_frames: int
    duration: float  # seconds
    timestamps: np.ndarray  # (num_frames,) float64 seconds from the first frame, non-decreasing

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._lock = threading.Lock()  # FFmpeg and decord contexts abort when two threads decode at once

    def warn(self, message: str) -> None:
        """Add a warning once, up to ``MAX_LOGGED_WARNINGS`` of them."""
        if len(self.warnings) < MAX_LOGGED_WARNINGS and message not in self.warnings:
            self.warnings.append(message)

    @property
    @abstractmethod
    def info(self) -> VideoInfo:
        """What the file holds and how it is decoded (read-only: a backend may build it lazily)."""

    @abstractmethod
    def _read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(unique sorted indices), H, W, 3) for sorted unique in-range indices."""

    @property
    def keyframes(self) -> np.ndarray | None:
        """Sorted frame indices of the keyframes (frames that decode on their own), as the container's index marks
        them; None where the backend does not know them without decoding."""
        return None

    @property
    def seeks(self) -> bool:
        """Whether a frame far into the file is reached by a keyframe seek, rather than by decoding every frame
        before it (so that parts of a long video can be read apart, each from its own keyframe)."""
        return True

    def read_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) RGB frames at ``indices`` (any order, repeats allowed), as a NumPy array."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, self.info.height, self.info.width, 3), dtype=np.uint8)
        if idx.min() < 0 or idx.max() >= self.num_frames:
            raise VideoDecodeError(self.path, f"frame indices must lie in [0, {self.num_frames}); "
                                              f"got min {idx.min()}, max {idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)
        with self._lock:
            frames = self._read(unique)
        if len(unique) == len(idx) and np.array_equal(unique, idx):
            return frames  # sorted and distinct already: no second copy of the frames
        return frames[inverse]

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``read_frames`` as a uint8 (T, H, W, 3) tensor (no copy)."""
        import torch

        return torch.from_numpy(self.read_frames(indices))

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class DecodedClip:
    """What a decode job returns: frames plus everything a caller needs to trust them."""

    frames: np.ndarray  # uint8 (T, H, W, 3), T = indices.size
    indices: np.ndarray  # the sampler's shape, e.g. (T,) or (num_clips, clip_len)
    timestamps: np.ndarray  # seconds, same shape as indices
    info: VideoInfo
    warnings: tuple[str, ...] = field(default_factory=tuple)


def check_file(path: str | Path) -> Path:
    """Accept only readable, non-empty regular local files that do not look like text (playlists, lists, SDP).

    FIFOs, devices and sockets hang FFmpeg's open; text playlists make decord and FFmpeg read *other* files.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "broken link: no such file" if os.path.islink(path) else "no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VideoDecodeError(path, "symlink loop") from None
        raise VideoDecodeError(path, f"cannot stat: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise VideoDecodeError(path, f"{kind}; only regular video files are read")
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except PermissionError:
        raise VideoDecodeError(path, "permission denied") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot read: {e.strerror}") from None
    if head.lstrip().startswith(b"#EXTM3U"):
        raise VideoDecodeError(path, "an HLS playlist, not a video file; playlists are refused")
    if _looks_like_text(head):
        raise VideoDecodeError(path, "a text file, not a video")
    return path


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 4  # a multi-byte character cut at the sniff boundary is still text
    return True
