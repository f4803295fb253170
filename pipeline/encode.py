"""Frames -> CLIP image embeddings, batched."""
from __future__ import annotations

import torch

import clip_model


@torch.no_grad()
def encode_frames(model: clip_model.CLIP, transform: clip_model.ClipTransform, frames: torch.Tensor,
                  batch_size: int = 32) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, E) unnormalised frame embeddings."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, frames.shape[0], batch_size):
        x = transform.video(frames[start : start + batch_size]).to(device)  # (t, 3, S, S)
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out)  # (T, E)
