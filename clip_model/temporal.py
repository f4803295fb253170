"""Learned temporal pooling over frame embeddings: ActionCLIP's "Transf" head.

Frame embeddings get learned positional embeddings, pass through a small transformer, are added back to the input
(residual), and are averaged over time. Unlike mean pooling it sees the order of frames, so it can tell an action
from its time reversal (moving left vs moving right).

One deliberate change from ActionCLIP: the positional embeddings start at the scale of the frame embeddings (std 1.0,
``position_init_std``), not at std 0.02. Attention cannot see order except through them, and at 0.02 they are tiny
next to a tiny CLIP's frame embeddings: trained from scratch on the action world, the head stayed blind to order
(every time-reversal pair at chance); at 1.0 it learned them (the README's training section has the numbers).
Fine-tuning a pretrained CLIP for many epochs, as ActionCLIP does, gives 0.02 time to grow.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .model import CLIP, ResidualAttentionBlock, Transformer


@dataclass(frozen=True)
class TemporalConfig:
    width: int  # the CLIP embedding size it pools
    num_frames: int = 8  # positional embeddings; longer clips are refused
    layers: int = 2
    heads: int = 4
    position_init_std: float = 1.0  # see the module docstring
    quick_gelu: bool = False  # ActionCLIP's fusion transformer uses QuickGELU
    eps: float = 1e-5  # LayerNorm epsilon (ActionCLIP's TF-style LayerNorm: 1e-12)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise UserError(f"temporal heads ({self.heads}) must divide width ({self.width})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TemporalTransformer(nn.Module):
    def __init__(self, cfg: TemporalConfig):
        super().__init__()
        self.config = cfg
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.num_frames, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, quick_gelu=cfg.quick_gelu, eps=cfg.eps)
        nn.init.normal_(self.positional_embedding, std=cfg.position_init_std)
        for block in self.transformer.resblocks:  # start as the identity: residual branches begin at zero
            assert isinstance(block, ResidualAttentionBlock)  # Transformer holds only these
            nn.init.zeros_(block.attn.out_proj.weight)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.zeros_(block.mlp.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.bias)
            nn.init.normal_(block.attn.in_proj_weight, std=cfg.width**-0.5)

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        """(B, T, E) frame embeddings -> (B, E) video embeddings (not normalised)."""
        B, T, E = frame_features.shape
        if T > self.config.num_frames:
            raise UserError(f"clip has {T} frames; this temporal pooler was built for at most "
                             f"{self.config.num_frames}")
        x = frame_features + self.positional_embedding[:T].to(frame_features.dtype)  # (B, T, E)
        x = frame_features + self.transformer(x)  # residual around the whole stack, as ActionCLIP
        return x.mean(dim=1)  # (B, E)


class VideoCLIP(nn.Module):
    """A CLIP plus a temporal pooler: frames (B, T, 3, S, S) and tokens (B, L) -> video and text embeddings."""

    def __init__(self, clip: CLIP, pooling: str, num_frames: int, temporal_layers: int = 2):
        super().__init__()
        if pooling not in ("mean", "temporal"):
            raise UserError(f"pooling {pooling!r}: choose 'mean' or 'temporal'")
        self.clip, self.pooling, self.num_frames = clip, pooling, num_frames
        width = clip.config.embed_dim
        self.temporal = TemporalTransformer(TemporalConfig(width, num_frames, temporal_layers, max(1, width // 32))) \
            if pooling == "temporal" else None

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        features = self.clip.encode_image(frames.flatten(0, 1)).view(B, T, -1)  # (B, T, E)
        return self.temporal(features) if self.temporal is not None else features.mean(dim=1)  # (B, E)

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_video(frames), self.clip.encode_text(tokens)  # (B, E), (B, E)
