"""Temporal pooling of frame embeddings into one video embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(T, E) raw frame embeddings -> (E,) unit vector: average, then L2-normalise (as ViFi-CLIP)."""
    return F.normalize(frame_features.mean(dim=0), dim=-1)
