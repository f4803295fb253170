"""Temporal pooling of frame embeddings into one video embedding (or one score vector)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Pooling = Literal["mean", "max", "frame_scores"]
POOLINGS = ("mean", "max", "frame_scores")


def mean_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(T, E) raw frame embeddings -> (E,) unit vector: average, then L2-normalise (as ViFi-CLIP)."""
    return F.normalize(frame_features.mean(dim=0), dim=-1)


def max_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(T, E) raw frame embeddings -> (E,) unit vector: element-wise max over time, then L2-normalise."""
    return F.normalize(frame_features.max(dim=0).values, dim=-1)


def pooled_probs(frame_features: torch.Tensor, class_features: torch.Tensor, logit_scale: float,
                 pooling: Pooling = "mean") -> torch.Tensor:
    """(T, E) frames and (C, E) unit class vectors -> (C,) probabilities.

    ``mean``/``max`` pool the embeddings, then score; ``frame_scores`` scores each frame (softmax of scaled cosine)
    and averages the probabilities over frames.
    """
    if pooling == "frame_scores":
        frames = F.normalize(frame_features, dim=-1)  # (T, E)
        return (logit_scale * frames @ class_features.t()).softmax(dim=-1).mean(dim=0)  # (C,)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    video = mean_pool(frame_features) if pooling == "mean" else max_pool(frame_features)  # (E,)
    return (logit_scale * video @ class_features.t()).softmax(dim=-1)
