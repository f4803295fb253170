"""The geometric half of a model's preprocessing, on uint8 NumPy frames and without torch: what decode workers run so
that only model-sized frames cross to the model's process.

The resize is Pillow's, frame by frame: short side to the model's size (or ``resize_to``), centre crop, the model's
interpolation, antialiased as ``clip_model.ClipTransform`` resizes uint8 frames. Both round to uint8 on their own:
on real 720p footage they differ by at most one level on 0.2 % of pixels (``tests/test_windows.py`` bounds it).
Families whose own evaluation resizes without antialiasing (ViFi-CLIP, mmaction2's ActionCLIP, Open-VCLIP) keep
torch's resize, imported only for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clip_model.geometry import center_crop_box, resized_size, three_crop_boxes

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
            return _torch_resize(frames, self, three=False)
        resized = self._resized_size(frames.shape[1], frames.shape[2])  # one size for every frame of a video
        top, left = center_crop_box(*resized, self.size)
        out = np.empty((len(frames), self.size, self.size, 3), dtype=np.uint8)
        for k, frame in enumerate(frames):
            out[k] = self._resized(frame, resized)[top : top + self.size, left : left + self.size]
        return out

    def resize_three_crop(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (U, H, W, 3) -> uint8 (3, U, S, S, 3): the start, centre and end crops along the long side (the
        multi-view test)."""
        if not self.antialias:
            return _torch_resize(frames, self, three=True)
        resized = self._resized_size(frames.shape[1], frames.shape[2])
        boxes = three_crop_boxes(*resized, self.size)
        out = np.empty((3, len(frames), self.size, self.size, 3), dtype=np.uint8)
        for k, frame in enumerate(frames):
            image = self._resized(frame, resized)
            for view, (top, left) in enumerate(boxes):
                out[view, k] = image[top : top + self.size, left : left + self.size]
        return out

    def _resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) a frame of (h, w) is resized to: short side to ``resize_to`` (or the size), or squashed."""
        if self.resize == "squash":
            return self.size, self.size
        return resized_size(h, w, self.resize_to or self.size)

    def _resized(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """One uint8 (H, W, 3) frame resized to ``size`` (height, width) with Pillow."""
        th, tw = size
        if (th, tw) == frame.shape[:2]:
            return frame
        return np.asarray(Image.fromarray(frame).resize((tw, th), _PIL_RESAMPLE[self.interpolation]))


PRESCALE = 2  # decoder pre-scaling: frames whose short side exceeds this many times the model's input


def decode_cap(preprocess: Any, prescale: bool) -> int | None:
    """The short side the decoder scales larger frames down to before the model's resize, or None (one resize, as
    every family's reference does). Pre-scaling is 9-11 % faster on 720p and 1080p H.264 and moves the model inputs
    by 1-1.4 grey levels on average, 18 at most (``benchmarks/bench_prescale.py``; ``docs/benchmarks.md``)."""
    return PRESCALE * preprocess.image_size if prescale else None


def _torch_resize(frames: np.ndarray, geometry: FrameGeometry, three: bool) -> np.ndarray:
    """The model's own tensor transform, for the families that resize without antialiasing (torch imported here):
    uint8 (U, S, S, 3), or (3, U, S, S, 3) with ``three``."""
    import torch

    from clip_model.config import PreprocessConfig
    from clip_model.transform import ClipTransform

    transform = ClipTransform(PreprocessConfig(geometry.size, interpolation=geometry.interpolation,
                                               resize=geometry.resize, resize_to=geometry.resize_to,
                                               antialias=False))
    resize = transform.resize_three_crop if three else transform.resize_crop
    parts = [resize(torch.from_numpy(frames[i : i + RESIZE_BATCH])) for i in range(0, len(frames), RESIZE_BATCH)]
    return torch.cat(parts, dim=1 if three else 0).movedim(-3, -1).contiguous().numpy()  # channels last


RESIZE_BATCH = 16  # frames resized at once by torch: the float copies interpolate makes stay small
