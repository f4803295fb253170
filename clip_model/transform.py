"""CLIP's preprocessing for PIL images and for batched uint8 video tensors.

Both paths: resize the short side to ``image_size`` (bicubic, antialiased), centre-crop a square, scale to [0, 1]
and normalise with the model's mean/std (SigLIP's ``resize="squash"`` resizes straight to the square instead). The
tensor path resizes whole clips at once in uint8, rounding like PIL, so it never round-trips through PIL per frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .config import PreprocessConfig
from .geometry import center_crop_box, resized_size, three_crop_boxes

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ClipTransform:
    """Callable on a PIL image -> (3, S, S) float tensor; ``video`` on uint8 (T, H, W, 3) -> (T, 3, S, S)."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        self._mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"ClipTransform({self.cfg})"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (T, 3, S, S) -> float (T, 3, S, S)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return (x.float() / 255.0 - mean) / std

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        size = self.cfg.image_size
        if self.cfg.resize == "squash":
            return size, size
        return resized_size(height, width, self.cfg.resize_to or size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size = self.cfg.image_size
        image = image.convert("RGB")
        h, w = self._resized(image.height, image.width)
        image = image.resize((w, h), _PIL_RESAMPLE[self.cfg.interpolation])
        top, left = center_crop_box(h, w, size)
        image = image.crop((left, top, left + size, top + size))
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
        return self.normalize(x.permute(2, 0, 1).unsqueeze(0))[0]

    def _resize_short(self, frames: torch.Tensor) -> torch.Tensor:  # uint8 (T, H, W, 3) -> uint8 (T, 3, h, w)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
        h, w = self._resized(x.shape[-2], x.shape[-1])
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x.contiguous(), size=(h, w), mode=self.cfg.interpolation,
                              antialias=self.cfg.antialias, align_corners=False)
        return x

    def resize_crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (T, H, W, 3) -> uint8 (T, 3, S, S): the geometric half of ``video``, which decode workers run
        so that only model-sized frames cross to the model's process; ``normalize`` is the other half."""
        x, size = self._resize_short(frames), self.cfg.image_size
        top, left = center_crop_box(x.shape[-2], x.shape[-1], size)
        return x[:, :, top : top + size, left : left + size].contiguous()

    def video(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (T, H, W, 3) -> normalised float (T, 3, S, S), vectorised over T."""
        return self.normalize(self.resize_crop(frames))

    def resize_three_crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> uint8 (3, T, 3, S, S): start, centre and end crops along the long side."""
        x, size = self._resize_short(frames), self.cfg.image_size
        boxes = three_crop_boxes(x.shape[-2], x.shape[-1], size)
        return torch.stack([x[:, :, t : t + size, l : l + size] for t, l in boxes])

    def video_three_crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> (3, T, 3, S, S): start, centre and end crops along the long side (multi-view test)."""
        return torch.stack([self.normalize(view) for view in self.resize_three_crop(frames)])
