"""SigLIP and SigLIP 2 (fixed resolution): CLIP's two towers with a sigmoid loss, written here.

Where SigLIP departs from CLIP (Zhai et al. 2023; the arithmetic of transformers' ``SiglipModel``):

- vision: a patch convolution with a bias, learned positions, no class token and no pre-norm; after the final norm a
  multi-head attention pooling head (MAP: a learned probe attends over the tokens, then a residual MLP) gives the
  image embedding, with no projection after it;
- text: no causal mask and no padding mask; every prompt is padded to the full context (64) and the embedding is
  read at the last position, then projected by a linear layer with a bias;
- MLPs have their own width and the tanh-approximated GELU, and every LayerNorm has eps 1e-6;
- scores are ``cos * exp(logit_scale) + logit_bias`` and each is a probability on its own (a sigmoid), not a share
  of a softmax over labels.

SigLIP 2's fixed-resolution checkpoints are this same architecture with Gemma's 256k vocabulary (a different
tokenizer, ``siglip_tokenizer``) and bilinear resizing. Weights are kept in this module's own names; ``from_hf``
converts a transformers state dict (q, k and v are fused into nn.MultiheadAttention's ``in_proj`` layout).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import PreprocessConfig
from .errors import CheckpointError, UserError
from .hf_layout import rename_hf
from .model import MLP, LayerNorm, Transformer
from .sp_tokenizer import SentencePieceTokenizer

EPS = 1e-6
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SigLIPConfig:
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    context_length: int = 64
    vocab_size: int = 32000
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    embed_dim: int = 768  # the text head's output; the image embedding is the MAP head's (vision_width)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise UserError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.embed_dim != self.vision_width:
            raise UserError(f"embed_dim ({self.embed_dim}) must equal vision_width ({self.vision_width}): the image "
                             "embedding is the MAP head's output, unprojected")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if heads < 1 or width % heads:
                raise UserError(f"{tower} heads ({heads}) must divide its width ({width})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def default_preprocess(self) -> PreprocessConfig:
        """SigLIP's own: straight to the square (no crop), bicubic, mean and std 0.5 (a checkpoint's
        preprocessor_config.json may say otherwise: SigLIP 2 resizes bilinearly)."""
        return PreprocessConfig(self.image_size, SIGLIP_MEAN, SIGLIP_STD, "bicubic", resize="squash")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> SigLIPConfig:
        """From a transformers ``config.json`` (model_type siglip): its text_config and vision_config."""
        t, v = config.get("text_config") or {}, config.get("vision_config") or {}
        defaults = cls()
        width = v.get("hidden_size", defaults.vision_width)
        return cls(image_size=v.get("image_size", defaults.image_size), patch_size=v.get("patch_size", 16),
                   vision_width=width, vision_layers=v.get("num_hidden_layers", 12),
                   vision_heads=v.get("num_attention_heads", 12), vision_mlp=v.get("intermediate_size", 3072),
                   context_length=t.get("max_position_embeddings", 64), vocab_size=t.get("vocab_size", 32000),
                   text_width=t.get("hidden_size", 768), text_layers=t.get("num_hidden_layers", 12),
                   text_heads=t.get("num_attention_heads", 12), text_mlp=t.get("intermediate_size", 3072),
                   embed_dim=t.get("projection_size") or t.get("hidden_size", 768))


class AttentionPoolingHead(nn.Module):
    """MAP: a learned probe attends over the tokens (nn.MultiheadAttention's parameters), then a residual MLP."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.ln = LayerNorm(width, eps=EPS)
        self.mlp = MLP(width, False, mlp, "tanh")
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, D)
        B, N, D = x.shape
        hd = D // self.heads
        wq, wkv = self.in_proj_weight.split([D, 2 * D])
        bq, bkv = self.in_proj_bias.split([D, 2 * D])
        q = F.linear(self.probe.to(x.dtype).expand(B, 1, D), wq, bq).view(B, 1, self.heads, hd).transpose(1, 2)
        k, v = F.linear(x, wkv, bkv).view(B, N, 2, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd)
        a = self.out_proj(a.transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        return (a + self.mlp(self.ln(a)))[:, 0]


class SigLIPVision(nn.Module):
    def __init__(self, cfg: SigLIPConfig):
        super().__init__()
        width = cfg.vision_width
        self.grid = cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.positional_embedding = nn.Parameter(torch.randn(self.grid**2, width) * width**-0.5)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, False, (cfg.vision_mlp, "tanh"),
                                       EPS)
        self.ln_post = LayerNorm(width, eps=EPS)
        self.head = AttentionPoolingHead(width, cfg.vision_heads, cfg.vision_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid**2, D), row-major patches
        x = self.transformer(x + self.positional_embedding.to(x.dtype))
        return self.head(self.ln_post(x))


class SigLIP(nn.Module):
    """``encode_image`` (B, 3, S, S) -> (B, E), ``encode_text`` (K, 64) ids -> (K, E), ``forward`` -> (B, K) logits
    whose sigmoids are per-label probabilities."""

    family = "siglip"

    def __init__(self, config: SigLIPConfig, preprocess: PreprocessConfig | None = None,
                 tokenizer: SentencePieceTokenizer | None = None, family: str | None = None):
        super().__init__()
        self.config = config
        self.family = family or type(self).family
        self.tokenizer = tokenizer  # from the checkpoint's folder (spiece.model or tokenizer.model)
        self.preprocess_config = preprocess or config.default_preprocess()
        self.visual = SigLIPVision(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(config.context_length, config.text_width) * 0.01)
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads, False,
                                       (config.text_mlp, "tanh"), EPS)
        self.ln_final = LayerNorm(config.text_width, eps=EPS)
        self.text_head = nn.Linear(config.text_width, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images.to(self.dtype))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:  # -> (K, context_length)
        if self.tokenizer is None:
            raise CheckpointError("this SigLIP has no tokenizer: its folder needs spiece.model (SigLIP) or "
                                  "tokenizer.model (SigLIP 2) beside the weights")
        return self.tokenizer(list(texts))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:  # (K, L) ids, L = context_length -> (K, E)
        if tokens.shape[1] != self.config.context_length:
            raise ValueError(f"SigLIP reads text padded to exactly {self.config.context_length} tokens (it pools the "
                             f"last position), got {tokens.shape[1]}; use the SigLIP tokenizer")
        x = self.token_embedding(tokens).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x))  # bidirectional: no causal mask, no padding mask
        return self.text_head(x[:, -1])

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, E) and (K, E) unnormalised features -> (B, K) logits; ``sigmoid`` of one is that pair's probability."""
        img, txt = F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)
        return img @ txt.T * self.logit_scale.float().exp() + self.logit_bias.float()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # -> (B, K)
        return self.logits(self.encode_image(images), self.encode_text(tokens))


# ---- transformers' layout -----------------------------------------------------------------------------------------

_HF_RENAMES = [  # (pattern on a transformers key, our key); then hf_layout's encoder-layer renames
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.head\.attention\.in_proj_", "visual.head.in_proj_"),
    (r"^vision_model\.head\.attention\.out_proj\.", "visual.head.out_proj."),
    (r"^vision_model\.head\.layernorm\.", "visual.head.ln."),
    (r"^vision_model\.head\.", "visual.head."),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.head\.", "text_head."),
]


def from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``SiglipModel`` state dict -> this module's names (q, k, v fused; scalars made 0-d)."""
    out = rename_hf({k.removeprefix("model."): v for k, v in sd.items()}, _HF_RENAMES)
    for scalar in ("logit_scale", "logit_bias"):
        if scalar in out:
            out[scalar] = out[scalar].reshape(())
    return out
