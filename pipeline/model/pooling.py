"""Temporal pooling of frame embeddings into one video embedding.

``mean`` and ``max`` ignore frame order, so an action and its time reversal (moving left / moving right) pool to the
same vector; ``temporal`` runs a trained ``TemporalTransformer`` (stored in checkpoints written by ``train``) that
sees the order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip_model.errors import UserError


def mean_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: average, then L2-normalise (as ViFi-CLIP)."""
    return F.normalize(frame_features.mean(dim=-2), dim=-1)


def max_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: element-wise max over time, then L2-normalise."""
    return F.normalize(frame_features.max(dim=-2).values, dim=-1)


@torch.no_grad()
def temporal_pool(frame_features: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """(V, T, E) raw frame embeddings -> (V, E) unit vectors through a trained temporal pooler."""
    p = next(head.parameters())
    return F.normalize(head(frame_features.to(p.device, p.dtype)).float().cpu(), dim=-1)


def pool_views(frame_features: torch.Tensor, pooling: str, head: nn.Module | None = None) -> torch.Tensor:
    """(V, T, E) raw frame embeddings -> (V, E) unit vectors by ``mean``, ``max`` or ``temporal`` (needs ``head``);
    ``mean_of_unit`` (Open-VCLIP's mean of per-frame logits): the mean of the unit frame embeddings, not
    renormalised."""
    if pooling == "mean_of_unit":
        return F.normalize(frame_features, dim=-1).mean(dim=-2)
    if pooling == "temporal":
        if head is None:
            raise UserError("temporal pooling needs a trained temporal pooler (a checkpoint written by train)")
        return temporal_pool(frame_features, head)
    if pooling == "mean":
        return mean_pool(frame_features)
    if pooling == "max":
        return max_pool(frame_features)
    raise UserError(f"pooling {pooling!r}: choose mean, max, temporal or mean_of_unit")

