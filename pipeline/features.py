"""Decoded clips -> frame embeddings, with temporal and spatial views, for every job that needs video features."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import clip_model

from .decode import DecodedClip, DecodeRequest, VideoInfo
from .workers import decode_in_workers


@dataclass(frozen=True)
class VideoFeatures:
    path: str
    frame_features: torch.Tensor  # (V, T, E) raw embeddings; V = temporal clips × spatial crops
    timestamps: np.ndarray  # (clips, T) seconds of the sampled frames
    warnings: tuple[str, ...] = ()
    info: VideoInfo | None = None


@torch.no_grad()
def encode_clip(model: clip_model.CLIP, transform: clip_model.ClipTransform, clip: DecodedClip, *, crops: int = 1,
                batch_size: int = 32) -> torch.Tensor:
    """A decoded clip whose indices are (T,) or (clips, T) -> (clips·crops, T, E) float32 frame embeddings on CPU."""
    if crops not in (1, 3):
        raise ValueError(f"crops ({crops}) must be 1 (centre) or 3 (start, centre, end)")
    clips = clip.indices.reshape(-1, clip.indices.shape[-1]) if clip.indices.ndim else clip.indices.reshape(1, 1)
    n_clips, t = clips.shape
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    # on a GPU: pinned host memory for asynchronous copies, and fp16 autocast for fp32 weights (mixed precision)
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=cuda and model.dtype == torch.float32)
    out = []
    for start in range(0, clip.frames.shape[0], batch_size):
        frames = clip.frames[start : start + batch_size]  # (b, H, W, 3) uint8
        x = transform.video_three_crop(frames) if crops == 3 else transform.video(frames)[None]  # (crops, b, 3, S, S)
        x = x.flatten(0, 1)
        if cuda:
            x = x.pin_memory()
        with amp:
            feats = model.encode_image(x.to(device, non_blocking=True)).float().cpu()  # (crops·b, E)
        out.append(feats.view(crops, frames.shape[0], -1))
    feats = torch.cat(out, dim=1)  # (crops, clips·T, E)
    return feats.view(crops, n_clips, t, -1).transpose(0, 1).reshape(n_clips * crops, t, -1)  # (V, T, E)


def extract_features(model: clip_model.CLIP, transform: clip_model.ClipTransform, requests: Sequence[DecodeRequest],
                     *, crops: int = 1, batch_size: int = 32, decode_workers: int = 2, timeout_s: float = 120.0,
                     max_rss_mb: float = 2048.0, fn: Callable[[DecodeRequest], DecodedClip] | None = None,
                     ) -> Iterator[tuple[DecodeRequest, VideoFeatures | None, str | None]]:
    """Decode in supervised workers (``fn``, default ``decode_request``) and encode in this process, yielding
    (request, features, error) per video as each finishes; exactly one of features and error is set; an error reads
    ``status: reason``."""
    workers = max(1, min(decode_workers, len(requests)))
    for request, outcome in decode_in_workers(list(requests), num_workers=workers, timeout_s=timeout_s,
                                              max_rss_mb=max_rss_mb, fn=fn):
        if outcome.status != "ok":
            yield request, None, f"{outcome.status}: {outcome.error}"
            continue
        clip: DecodedClip = outcome.result
        feats = encode_clip(model, transform, clip, crops=crops, batch_size=batch_size)
        stamps = clip.timestamps.reshape(-1, clip.indices.shape[-1]) if clip.indices.ndim else clip.timestamps
        yield request, VideoFeatures(request.path, feats, stamps, clip.warnings, clip.info), None
