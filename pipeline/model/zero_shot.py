"""Zero-shot scoring: how cosines become probabilities (softmax over the labels for CLIP and X-CLIP, a sigmoid per
label for SigLIP; each family's choice in ``families``), and top-k predictions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prediction:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class ProbabilityRule:
    """How a model turns cosines into probabilities: ``softmax`` over the labels of ``scale * cos`` (CLIP: they sum to
    one), or ``sigmoid`` of ``scale * cos + bias`` per label (SigLIP: each label's own probability)."""

    kind: str  # softmax | sigmoid
    scale: float
    bias: float = 0.0

    def probs(self, cos: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        logits = self.scale * cos + self.bias
        return logits.sigmoid() if self.kind == "sigmoid" else logits.softmax(dim=-1)


def top_k(probs: torch.Tensor, classnames: Sequence[str], k: int) -> list[Prediction]:
    """One Prediction per row of (N, C) ``probs``, best first."""
    scores, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [Prediction(tuple(classnames[j] for j in row), tuple(float(s) for s in srow))
            for row, srow in zip(idx.tolist(), scores.tolist())]
