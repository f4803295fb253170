"""Temporal pooling of frame embeddings into one video embedding."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

# mean/max pool embeddings; frame_scores averages per-frame probabilities instead (see classify.video_probs)
Pooling = Literal["mean", "max", "frame_scores"]
POOLINGS = ("mean", "max", "frame_scores")


def mean_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: average, then L2-normalise (as ViFi-CLIP)."""
    return F.normalize(frame_features.mean(dim=-2), dim=-1)


def max_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: element-wise max over time, then L2-normalise."""
    return F.normalize(frame_features.max(dim=-2).values, dim=-1)


def video_embedding(frame_features: torch.Tensor) -> torch.Tensor:
    """(V, T, E) views -> (E,) unit vector: mean-pool each view over time, average the views, renormalise.
    The feature a linear probe is trained and applied on."""
    return F.normalize(mean_pool(frame_features).mean(dim=0), dim=-1)
