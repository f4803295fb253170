"""Zero-shot classification: scaled cosine similarity against class embeddings, softmax, top-k."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prediction:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


def zero_shot_probs(video_features: torch.Tensor, class_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(N, E) and (C, E) unit vectors -> (N, C) probabilities of softmax(logit_scale · cos)."""
    return (logit_scale * video_features @ class_features.t()).softmax(dim=-1)


def top_k(probs: torch.Tensor, classnames: Sequence[str], k: int) -> list[Prediction]:
    """One Prediction per row of (N, C) ``probs``, best first."""
    scores, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [Prediction(tuple(classnames[j] for j in row), tuple(float(s) for s in srow))
            for row, srow in zip(idx.tolist(), scores.tolist())]
