"""Small JPEG pictures of frames: the poster ``tag`` stores per video, and the segment thumbnails ``serve`` decodes on
request (in a supervised worker: ``thumbnail_jpeg`` is the worker's function).

A poster is bounded: at most ``POSTER_SIDE`` pixels on its long side and ``POSTER_BYTES`` encoded (the quality steps
down until it fits), so posters add at most ~20 KB a video to the index.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

POSTER_SIDE = 256  # pixels on the long side
POSTER_BYTES = 20_000  # a poster's JPEG is at most this
QUALITIES = (80, 65, 50, 35)  # tried in turn until the JPEG fits


def jpeg(frame: ArrayLike, max_side: int = POSTER_SIDE, max_bytes: int = POSTER_BYTES) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes, scaled down to ``max_side`` on its long side, at the best quality of
    ``QUALITIES`` that fits in ``max_bytes`` (halving the size while none does)."""
    frame = np.asarray(frame)  # (a torch tensor too)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame is uint8 (H, W, 3), got {frame.dtype} {tuple(frame.shape)}")
    image = Image.fromarray(frame)
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)  # keeps the aspect ratio, never enlarges
    while True:
        for quality in QUALITIES:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality, optimize=True)
            if len(data := buf.getvalue()) <= max_bytes or min(image.size) <= 16:
                return data
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class ThumbnailTask:
    """The frame of ``path`` shown at ``time_s`` (the last frame starting at or before it)."""

    path: str
    time_s: float
    max_side: int = 320


def thumbnail_jpeg(task: ThumbnailTask) -> bytes:
    """Decode one frame and encode it as JPEG: a decode worker's function (raises ``VideoDecodeError``)."""
    from pipeline.video.open import open_video

    with open_video(task.path, resize=2 * task.max_side) as reader:
        stamps = np.asarray(reader.timestamps)
        index = max(0, int(np.searchsorted(stamps, task.time_s, side="right")) - 1)
        frame = reader.read_frames(np.array([index]))[0]  # (H, W, 3): NumPy, so the worker never loads torch
    return jpeg(frame, task.max_side, max_bytes=4 * POSTER_BYTES)
