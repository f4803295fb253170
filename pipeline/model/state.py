"""What a video (or window, or view) leaves for scoring once its frames are gone: unit vectors and, for X-CLIP,
visual tokens."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
