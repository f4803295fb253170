"""Procedurally generated action videos, written as real H.264 files with PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def moving_square_frames(action: str, color: str, *, size: int = 64, num_frames: int = 24, square: int = 14,
                         seed: int = 0) -> np.ndarray:
    """uint8 (T, size, size, 3): a coloured square crossing a noisy grey background in one direction."""
    if action not in DIRECTIONS:
        raise ValueError(f"action {action!r}: choose one of {', '.join(DIRECTIONS)}")
    rng = np.random.default_rng(seed)
    dx, dy = DIRECTIONS[action]
    span = size - square
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = rng.integers(90, 130, (size, size, 3), dtype=np.uint8)
        progress = t / max(1, num_frames - 1)
        x = round(span / 2 + dx * (progress - 0.5) * span)
        y = round(span / 2 + dy * (progress - 0.5) * span)
        frame[y : y + square, x : x + square] = COLORS[color]
        frames[t] = frame
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 12, crf: int = 18) -> Path:
    """Encode uint8 (T, H, W, 3) RGB frames as H.264 in an MP4."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
