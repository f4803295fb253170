"""Top-k predictions from label probabilities (how cosines become probabilities is ``scorers.ProbabilityRule``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prediction:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


def top_k(probs: torch.Tensor, classnames: Sequence[str], k: int) -> list[Prediction]:
    """One Prediction per row of (N, C) ``probs``, best first."""
    scores, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [Prediction(tuple(classnames[j] for j in row), tuple(float(s) for s in srow))
            for row, srow in zip(idx.tolist(), scores.tolist())]
