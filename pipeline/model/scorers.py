"""What a video (or window, or view) leaves for scoring once its frames are gone (``VideoState``: unit vectors and, for
X-CLIP, visual tokens), and scoring label texts against those states, as one of three strategies (``families.Text``
picks it), each with its own label texts:

    LabelScorer        (C, E) unit texts, prompt-ensembled as embeddings     cosines = vectors @ texts.T
    TemplateScorer     (K, C, E) a unit text per template (ActionCLIP)        probabilities averaged over templates
    ConditionedScorer  (C, E) raw mean texts (X-CLIP)                         texts conditioned on each state's tokens

and the family's ``ProbabilityRule`` (softmax or sigmoid, at the family's logit scale) on top.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from .families import Family, Text
from .prompts import cached_class_embeddings, template_embeddings

if TYPE_CHECKING:
    import clip_model


@dataclass(frozen=True)
class VideoState:
    """What scoring a video (or window, or view) needs, without its frames: (N, E) unit vectors and, for X-CLIP,
    the (N, K, E) visual tokens its prompt generator attends to."""

    vectors: torch.Tensor  # (N, E) float32 unit vectors
    tokens: torch.Tensor | None = None  # (N, K, E) float32, or None

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def mean(self) -> VideoState:
        """One state (1, ...) from N: the renormalised mean of the vectors and the mean of the tokens (a video from
        its windows or views)."""
        tokens = None if self.tokens is None else self.tokens.mean(dim=0, keepdim=True)
        return VideoState(F.normalize(self.vectors.mean(dim=0, keepdim=True), dim=-1), tokens)

    def rows(self, start: int, end: int) -> VideoState:
        return VideoState(self.vectors[start:end], None if self.tokens is None else self.tokens[start:end])

    @staticmethod
    def cat(states: Sequence[VideoState]) -> VideoState:
        tokens = [s.tokens for s in states]
        return VideoState(torch.cat([s.vectors for s in states]),
                          None if any(t is None for t in tokens) else torch.cat(tokens))  # type: ignore[arg-type]


XCLIP_ROWS = 64  # videos whose label texts are conditioned at once: (rows, C, E) floats stay ~50 MB at C = 400


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


def probability_rule(model: clip_model.FrameTextModel, family: Family) -> ProbabilityRule:
    """The family's scoring with the model's learned scale (and, for a sigmoid, its learned bias): CLIP caps the
    scale at 100 as it trained it; ActionCLIP's test uses a fixed 100."""
    if family.logit_scale == "fixed_100":
        return ProbabilityRule(family.scoring, 100.0)
    scale = model.logit_scale.detach().float().exp()
    if family.logit_scale == "learned_max_100":
        scale = scale.clamp(max=100)
    bias = getattr(model, "logit_bias", None) if family.scoring == "sigmoid" else None
    return ProbabilityRule(family.scoring, float(scale), 0.0 if bias is None else float(bias.detach().float()))


class LabelScorer:
    """Label texts ready to score states: ``cosines``, ``logits`` and ``probs``, (N, C) each."""

    conditioned = False  # whether the texts depend on the state (a text search then re-ranks its candidates)

    def __init__(self, text: torch.Tensor, scoring: ProbabilityRule, model: clip_model.FrameTextModel | None = None):
        self.text, self.scoring = text, scoring  # (C, E)

    @staticmethod
    def label_texts(model: clip_model.FrameTextModel, classnames: Sequence[str], templates: Sequence[str],
                    cache_dir: Path | None, model_key: str) -> torch.Tensor:
        """(C, E) unit label texts, each label's prompts averaged as embeddings (cached under ``cache_dir``)."""
        return cached_class_embeddings(model, model_key, classnames, templates, cache_dir)

    @property
    def kind(self) -> str:
        return self.scoring.kind

    @torch.no_grad()
    def cosines(self, state: VideoState) -> torch.Tensor:
        """(N, C) float32 cosines of the states' vectors and the label texts."""
        return state.vectors.float() @ self.text.t()

    def logits(self, state: VideoState) -> torch.Tensor:
        return self.scoring.scale * self.cosines(state) + self.scoring.bias

    def probs(self, state: VideoState) -> torch.Tensor:
        """(N, C): softmax over the labels, or each label's own sigmoid."""
        return self.scoring.probs(self.cosines(state))


class TemplateScorer(LabelScorer):
    """One unit text per template and label (K, C, E); a label's probability is the mean over templates of each
    template's probabilities (ActionCLIP's test); its cosine the mean of the templates' cosines."""

    @staticmethod
    def label_texts(model: clip_model.FrameTextModel, classnames: Sequence[str], templates: Sequence[str],
                    cache_dir: Path | None, model_key: str) -> torch.Tensor:
        return template_embeddings(model, classnames, templates)  # (K, C, E)

    @torch.no_grad()
    def cosines(self, state: VideoState) -> torch.Tensor:
        return torch.einsum("ne,kce->nc", state.vectors.float(), self.text) / self.text.shape[0]

    def probs(self, state: VideoState) -> torch.Tensor:
        cos = torch.einsum("ne,kce->knc", state.vectors.float(), self.text)  # (K, N, C)
        return self.scoring.probs(cos).mean(dim=0)


class ConditionedScorer(LabelScorer):
    """X-CLIP: the label texts (each label's raw mean prompt embedding) pass through its video-specific prompt
    generator, which attends to each state's visual tokens, before the cosine."""

    conditioned = True

    def __init__(self, text: torch.Tensor, scoring: ProbabilityRule, model: clip_model.FrameTextModel | None = None):
        super().__init__(text, scoring)
        assert model is not None, "conditioned texts need the model that conditions them"
        self.model = cast("clip_model.XCLIP", model)

    @staticmethod
    def label_texts(model: clip_model.FrameTextModel, classnames: Sequence[str], templates: Sequence[str],
                    cache_dir: Path | None, model_key: str) -> torch.Tensor:
        return cached_class_embeddings(model, model_key, classnames, templates, cache_dir, normalize=False)

    @torch.no_grad()
    def cosines(self, state: VideoState) -> torch.Tensor:
        assert state.tokens is not None, "X-CLIP states carry their tokens"
        p = next(self.model.parameters())
        out = []
        for start in range(0, len(state), XCLIP_ROWS):
            part = state.rows(start, start + XCLIP_ROWS)
            assert part.tokens is not None
            text = self.model.condition_text(part.tokens.to(p.device, p.dtype), self.text.to(p.device, p.dtype))
            out.append(torch.einsum("be,bce->bc", part.vectors.float().to(p.device),
                                    F.normalize(text.float(), dim=-1)).cpu())  # (n, C)
        return torch.cat(out) if out else torch.zeros(0, self.text.shape[0])


SCORERS: dict[Text, type[LabelScorer]] = {"embeddings": LabelScorer, "template_probabilities": TemplateScorer,
                                          "video_conditioned": ConditionedScorer}
