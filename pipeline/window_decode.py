"""The tag job's decode worker: a video's sliding windows, decoded in chunks and resized to the model's input, as
NumPy arrays. It imports neither torch nor clip_model, so a decode worker starts in a fraction of a second and holds
about a tenth of the memory a torch import costs (``benchmarks/bench_tag.py`` measures both).

The resize is Pillow's, frame by frame: short side to the model's size (or ``resize_to``), centre crop, the model's
interpolation, antialiased as ``clip_model.ClipTransform`` resizes uint8 frames. Both round to uint8 on their own:
on real 720p footage they differ by at most one level on 0.2 % of pixels (``tests/test_windows.py`` bounds it).
Families whose own evaluation resizes without antialiasing (ViFi-CLIP, mmaction2's ActionCLIP, Open-VCLIP) keep
torch's resize in the worker, imported there only for them.
"""
from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.video import Backend
from pipeline.video.open import open_video
from pipeline.video.reader import VideoDecodeError, VideoInfo
from pipeline.video.samplers import sliding_windows
from pipeline.video.supervisor import trim_heap

from .thumbnails import jpeg

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class FrameGeometry:
    """The geometric half of a model's preprocessing (``clip_model.PreprocessConfig``), as plain data a worker can
    unpickle without importing the model library."""

    size: int  # the square the model takes
    interpolation: str = "bicubic"
    resize: str = "shortest"  # shortest: short side to resize_to (or size), centre crop; squash: straight to size
    resize_to: int | None = None
    antialias: bool = True

    @classmethod
    def of(cls, preprocess: Any) -> FrameGeometry:
        """From a ``PreprocessConfig`` (read by attribute, so this module needs no import of it)."""
        return cls(preprocess.image_size, preprocess.interpolation, preprocess.resize, preprocess.resize_to,
                   preprocess.antialias)

    def resize_crop(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (U, H, W, 3) -> uint8 (U, S, S, 3): resized and centre-cropped as the model's transform does."""
        if not self.antialias:
            return _torch_resize_crop(frames, self)
        out = np.empty((len(frames), self.size, self.size, 3), dtype=np.uint8)
        for k, frame in enumerate(frames):
            h, w = frame.shape[:2]
            if self.resize == "squash":
                th, tw = self.size, self.size
            else:
                short = self.resize_to or self.size  # the long side truncated, as torchvision and ClipTransform do
                th, tw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
            image = Image.fromarray(frame)
            if (th, tw) != (h, w):
                image = image.resize((tw, th), _PIL_RESAMPLE[self.interpolation])
            top, left = int(round((th - self.size) / 2.0)), int(round((tw - self.size) / 2.0))
            out[k] = np.asarray(image)[top : top + self.size, left : left + self.size]
        return out


def _torch_resize_crop(frames: np.ndarray, geometry: FrameGeometry) -> np.ndarray:
    """The model's own tensor transform, for the families that resize without antialiasing (torch imported here)."""
    import torch

    from clip_model.config import PreprocessConfig
    from clip_model.transform import ClipTransform

    torch.set_num_threads(1)  # one of several decode workers: the resize must not spread over every core
    transform = ClipTransform(PreprocessConfig(geometry.size, interpolation=geometry.interpolation,
                                               resize=geometry.resize, resize_to=geometry.resize_to,
                                               antialias=False))
    parts = [transform.resize_crop(torch.from_numpy(frames[i : i + RESIZE_BATCH]))
             for i in range(0, len(frames), RESIZE_BATCH)]
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous().numpy()  # (U, S, S, 3)


RESIZE_BATCH = 16  # frames resized at once by torch: the float copies interpolate makes stay small


class StageError(Exception):
    """A decode failure labelled with the stage it happened in (``open`` or ``decode``)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.reason = f"{stage}: {reason}"


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


@dataclass(frozen=True)
class WindowHeader:
    """First item of every attempt at a video: a consumer starts (or starts over) on it."""

    info: VideoInfo
    bounds: tuple[tuple[float, float], ...]  # (start_s, end_s) of every window


@dataclass(frozen=True)
class WindowChunk:
    first: int  # number of this chunk's first window
    positions: np.ndarray  # (w, T) int64: window j's frames are frames[positions[j]]
    frames: np.ndarray  # uint8 (U, S, S, 3): the chunk's distinct frames, time order, at the model's size
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
        yield WindowHeader(info, tuple((w.start_s, w.end_s) for w in windows))
        indices = np.stack([w.indices for w in windows])  # (W, T) frame numbers
        middle = len(indices) // 2
        frame_bytes = info.height * info.width * 3
        for start, end in chunk_ranges(indices, max(1, int(task.chunk_mb * 2**20 // frame_bytes))):
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
            yield WindowChunk(start, inverse.reshape(end - start, -1), small, poster)
            del small
            trim_heap()  # the chunk has left: give its pages back before the next (see trim_heap)
        return tuple(reader.warnings)
