"""Video decoding with PyAV: a reader that returns exactly the frames asked for, as uint8 RGB tensors."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class VideoDecodeError(RuntimeError):
    """A video could not be decoded; carries the path and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError("PyAV is required for decoding: pip install av") from None
    return av


class PyAVReader:
    """Decodes sequentially from the start: every frame index is exact, whatever the GOP or B-frame layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoDecodeError(path, "no such file" if not self.path.exists() else "not a regular file")
        av = _import_av()
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoDecodeError(path, "no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 0)
                count = sum(1 for _ in container.decode(stream))
                self.info = VideoInfo(num_frames=count, fps=fps, height=stream.height, width=stream.width)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot decode: {e}") from None
        if self.info.num_frames == 0:
            raise VideoDecodeError(path, "no decodable frames")

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (T, H, W, 3) RGB frames at ``indices``, in the order asked for."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return torch.empty(0, self.info.height, self.info.width, 3, dtype=torch.uint8)
        if indices.min() < 0 or indices.max() >= self.info.num_frames:
            raise VideoDecodeError(self.path, f"frame indices {indices.tolist()} outside [0, {self.info.num_frames})")
        av = _import_av()
        wanted = set(indices.tolist())
        found: dict[int, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        found[i] = frame.to_ndarray(format="rgb24")
                    if i >= indices.max():
                        break
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding failed: {e}") from None
        return torch.from_numpy(np.stack([found[i] for i in indices.tolist()]))


def open_video(path: str | Path) -> PyAVReader:
    return PyAVReader(path)
