"""Zero-shot classification: scaled cosine similarity against class embeddings, softmax (CLIP) or a sigmoid per label
(SigLIP), views averaged, top-k."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import clip_model

from .pooling import Pooling, pool_views


@dataclass(frozen=True)
class Prediction:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class LabelScoring:
    """How a model turns cosines into probabilities: ``softmax`` over the labels of ``scale * cos`` (CLIP: they sum to
    one), or ``sigmoid`` of ``scale * cos + bias`` per label (SigLIP: each label's own probability)."""

    kind: str  # softmax | sigmoid
    scale: float
    bias: float = 0.0

    def probs(self, cos: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        logits = self.scale * cos + self.bias
        return logits.sigmoid() if self.kind == "sigmoid" else logits.softmax(dim=-1)


def label_scoring(model: clip_model.FrameTextModel) -> LabelScoring:
    """A model's own scoring: SigLIP's sigmoid with its learned scale and bias; CLIP's softmax with its scale (capped
    at 100, as CLIP trained it)."""
    scale = model.logit_scale.detach().float().exp()
    if isinstance(model, clip_model.SigLIP):
        return LabelScoring("sigmoid", float(scale), float(model.logit_bias.detach().float()))
    return LabelScoring("softmax", float(scale.clamp(max=100)))


def zero_shot_probs(video_features: torch.Tensor, class_features: torch.Tensor,
                    scoring: LabelScoring | float) -> torch.Tensor:
    """(..., E) and (C, E) unit vectors -> (..., C) probabilities (a bare float: CLIP's softmax at that scale)."""
    if not isinstance(scoring, LabelScoring):
        scoring = LabelScoring("softmax", float(scoring))
    return scoring.probs(video_features @ class_features.t())


def video_probs(frame_features: torch.Tensor, class_features: torch.Tensor, logit_scale: LabelScoring | float,
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
