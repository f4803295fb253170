"""Zero-shot classification: scaled cosine similarity against class embeddings, softmax, views averaged, top-k."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import Pooling, pool_views


@dataclass(frozen=True)
class Prediction:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


def zero_shot_probs(video_features: torch.Tensor, class_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(..., E) and (C, E) unit vectors -> (..., C) probabilities of softmax(logit_scale · cos)."""
    return (logit_scale * video_features @ class_features.t()).softmax(dim=-1)


def video_probs(frame_features: torch.Tensor, class_features: torch.Tensor, logit_scale: float,
                pooling: Pooling = "mean", head: nn.Module | None = None) -> torch.Tensor:
    """(V, T, E) raw frame embeddings of V views -> (C,) probabilities, averaged over the views.

    ``mean``/``max``/``temporal`` (with the trained ``head``) pool each view's embeddings over time, then score;
    ``frame_scores`` scores every frame and averages the probabilities.
    """
    if pooling == "frame_scores":
        probs = zero_shot_probs(F.normalize(frame_features, dim=-1), class_features, logit_scale)  # (V, T, C)
        return probs.mean(dim=(0, 1))
    pooled = pool_views(frame_features, pooling, head)  # (V, E)
    return zero_shot_probs(pooled, class_features, logit_scale).mean(dim=0)


def top_k(probs: torch.Tensor, classnames: Sequence[str], k: int) -> list[Prediction]:
    """One Prediction per row of (N, C) ``probs``, best first."""
    scores, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [Prediction(tuple(classnames[j] for j in row), tuple(float(s) for s in srow))
            for row, srow in zip(idx.tolist(), scores.tolist())]
