"""X-CLIP (Ni et al. 2022, microsoft/VideoX): CLIP extended to video, written here on our CLIP modules.

    frames (B, T, 3, S, S) -> cross-frame ViT: in every block each frame's class token becomes a message token,
        messages attend across the T frames of their video, and each frame attends over its tokens plus its message
    -> per-frame class embeddings (B, T, E) -> multi-frame integration transformer (MIT) -> mean -> video (B, E)
    text (K, 77) -> CLIP's causal text tower -> (K, E) -> video-specific prompts: the text attends over the video's
        patch tokens (averaged over frames) and is shifted per video -> (B, K, E)
    logits (B, K) = exp(logit_scale) * cos(video b, text k as conditioned on video b)

The frame count T is the checkpoint's (the MIT's position embedding): 8, 16 or 32. Weights are kept in VideoX's
names (OpenAI CLIP's plus ``message_*``, ``mit.*``, ``prompts_*``), which are ours for CLIP; ``from_hf`` converts a
transformers ``XCLIPModel`` state dict. Text embeddings depend on the video, so a cache of label embeddings holds the
text tower's output (``encode_text``) and ``logits`` conditions it per video.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import HEAD_WIDTH, CLIPConfig, PreprocessConfig, TextConfig, VisionConfig, config_from_state_dict
from .errors import UserError
from .hf_layout import rename_hf
from .model import CLIP, LayerNorm, QuickGELU, ResidualAttentionBlock, SelfAttention, VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class XCLIPConfig:
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    num_frames: int = 8
    mit_layers: int = 1
    mit_heads: int = 8
    prompt_layers: int = 2
    prompt_heads: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.clip, dict):
            object.__setattr__(self, "clip", CLIPConfig.from_dict(self.clip))
        if self.clip.vision.is_resnet:
            raise UserError("X-CLIP's cross-frame communication needs a ViT image tower")
        if self.num_frames < 1:
            raise UserError(f"num_frames ({self.num_frames}) must be >= 1")
        for name in ("mit_heads", "prompt_heads"):
            if self.clip.embed_dim % getattr(self, name):
                raise UserError(f"{name} ({getattr(self, name)}) must divide embed_dim ({self.clip.embed_dim})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def default_preprocess(self) -> PreprocessConfig:
        """X-CLIP's (the hub's preprocessor): the short side to the input size and a centre crop, bilinear, ImageNet
        mean and std."""
        return PreprocessConfig(self.clip.vision.image_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> XCLIPConfig:
        """From a transformers ``config.json`` (model_type xclip; nested text_config and vision_config)."""
        t = config.get("text_config") or config.get("text_config_dict") or {}
        v = config.get("vision_config") or config.get("vision_config_dict") or {}
        embed = config.get("projection_dim", 512)
        vision = VisionConfig(image_size=v.get("image_size", 224), layers=v.get("num_hidden_layers", 12),
                              width=v.get("hidden_size", 768), heads=v.get("num_attention_heads", 12),
                              patch_size=v.get("patch_size", 32))
        text = TextConfig(context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
                          width=t.get("hidden_size", 512), heads=t.get("num_attention_heads", 8),
                          layers=t.get("num_hidden_layers", 12))
        for tower, hidden in ((t, text.width), (v, vision.width)):
            if tower.get("intermediate_size", 4 * hidden) != 4 * hidden:
                raise UserError(f"X-CLIP config: MLP width {tower['intermediate_size']} is not 4 x {hidden}")
        if v.get("mit_intermediate_size", 4 * embed) != 4 * embed or v.get("mit_hidden_size", embed) != embed:
            raise UserError("X-CLIP config: the MIT must be embed_dim wide with a 4x MLP")
        return cls(CLIPConfig(embed_dim=embed, vision=vision, text=text, quick_gelu=True),
                   num_frames=v.get("num_frames", 8), mit_layers=v.get("mit_num_hidden_layers", 1),
                   mit_heads=v.get("mit_num_attention_heads", 8), prompt_layers=config.get("prompt_layers", 2),
                   prompt_heads=config.get("prompt_num_attention_heads", 8))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> XCLIPConfig:
        """From the shapes of a VideoX-layout state dict; head counts by VideoX's rule (64-wide heads)."""
        clip = config_from_state_dict(sd, quick_gelu=True)
        heads = max(1, clip.embed_dim // HEAD_WIDTH)
        return cls(clip, num_frames=sd["mit.positional_embedding"].shape[1],
                   mit_layers=_count(sd, "mit.resblocks."), mit_heads=heads,
                   prompt_layers=_count(sd, "prompts_generator.decoder."), prompt_heads=heads)


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


class CrossFrameBlock(ResidualAttentionBlock):
    """A ViT block whose frames exchange messages: each frame's class token, projected, attends across the frames of
    its video (``message_attn``), and the result joins that frame's tokens for this block's self-attention."""

    def __init__(self, width: int, heads: int, frames: int):
        super().__init__(width, heads, quick_gelu=True)
        self.frames = frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = SelfAttention(width, heads)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # (B*T, L, D), videos' frames in a row
        BT, L, D = x.shape
        m = self.message_fc(x[:, 0]).view(BT // self.frames, self.frames, D)  # (B, T, D)
        m = m + self.message_attn(self.message_ln(m))
        h = torch.cat([x, m.reshape(BT, 1, D)], dim=1)  # (B*T, L + 1, D)
        h = h + self.attn(self.ln_1(h))
        x = h[:, :L]  # the message token is dropped again
        return x + self.mlp(self.ln_2(x))


class CrossFrameVision(VisionTransformer):
    def __init__(self, cfg: VisionConfig, output_dim: int, frames: int):
        super().__init__(cfg, output_dim, quick_gelu=True)
        assert isinstance(cfg.layers, int)  # XCLIPConfig refuses ResNets
        self.frames = frames
        self.transformer.resblocks = nn.ModuleList(CrossFrameBlock(cfg.width, cfg.heads, frames)
                                                   for _ in range(cfg.layers))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*T, 3, S, S) -> (B*T, E) projected class embeddings and (B*T, N, D) last-layer patch tokens."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B*T, N, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.transformer(self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)))
        return self.ln_post(x[:, 0]) @ self.proj, x[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[0]


class MultiframeIntegration(nn.Module):
    """MIT: a small transformer over a video's frame embeddings, added back to them, then their mean."""

    def __init__(self, width: int, frames: int, layers: int, heads: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(1, frames, width) * 0.02)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu=True) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> (B, E)
        h = x + self.positional_embedding.to(x.dtype)
        for block in self.resblocks:
            h = block(h)
        return (h + x).mean(dim=1)


class PromptCrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # (B, K, E), (B, N, E) -> (B, K, E)
        B, K, E = q.shape
        hd = E // self.heads
        q = self.q_proj(q).view(B, K, self.heads, hd).transpose(1, 2)
        k = self.k_proj(kv).view(B, -1, self.heads, hd).transpose(1, 2)
        v = self.v_proj(kv).view(B, -1, self.heads, hd).transpose(1, 2)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, K, E))


class PromptGeneratorLayer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.cross_attn = PromptCrossAttention(width, heads)
        self.norm1, self.norm3 = LayerNorm(width), LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Dropout(0.0), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), visual)
        return x + self.mlp(self.norm3(x))


class VideoSpecificPrompt(nn.Module):
    """The shift each label's text embedding gets from one video: alpha * (text attended over the video's tokens)."""

    def __init__(self, width: int, layers: int, heads: int, alpha: float = 0.1):
        super().__init__()
        self.norm = LayerNorm(width)
        self.decoder = nn.ModuleList(PromptGeneratorLayer(width, heads) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((width,), alpha))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:  # (B, K, E), (B, N, E) -> (B, K, E)
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text


class XCLIP(CLIP):
    """``encode_video`` (B, T, 3, S, S) -> (B, E) videos (``encode_video_tokens``: and the (B, N, E) tokens that
    condition the prompts), ``encode_text`` as CLIP, ``logits(videos, tokens, text)`` -> (B, K),
    ``forward(frames, token_ids)`` -> (B, K) logits_per_video."""

    family = "xclip"

    def __init__(self, config: XCLIPConfig, preprocess: PreprocessConfig | None = None, family: str | None = None):
        c = config.clip
        super().__init__(c, preprocess or config.default_preprocess(),
                         visual=CrossFrameVision(c.vision, c.embed_dim, config.num_frames), family=family)
        self.xclip_config = config
        self.num_frames = config.num_frames
        self.mit = MultiframeIntegration(c.embed_dim, config.num_frames, config.mit_layers, config.mit_heads)
        self.prompts_visual_ln = LayerNorm(c.vision.width)
        self.prompts_visual_proj = nn.Parameter(torch.randn(c.vision.width, c.embed_dim) * c.vision.width**-0.5)
        self.prompts_generator = VideoSpecificPrompt(c.embed_dim, config.prompt_layers, config.prompt_heads)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"X-CLIP encodes videos of {self.num_frames} frames, not single images: use encode_video")

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) normalised frames -> (B, E) video embeddings (the MIT's mean), as every video model's
        ``encode_video``; scoring labels also needs the tokens (``encode_video_tokens``)."""
        return self.encode_video_tokens(frames)[0]

    def encode_video_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 3, S, S) normalised frames, T = the checkpoint's frame count -> (B, E) video embeddings (the MIT's
        mean) and (B, N, E) patch tokens averaged over frames, which condition the text (``logits``)."""
        if frames.ndim != 5 or frames.shape[1] != self.num_frames:
            raise ValueError(f"X-CLIP takes (videos, {self.num_frames}, 3, H, W): this checkpoint was built for "
                             f"{self.num_frames} frames per video, got shape {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        assert isinstance(self.visual, CrossFrameVision)
        cls, tokens = self.visual.forward_tokens(frames.flatten(0, 1).to(self.dtype))  # (B*T, E), (B*T, N, D)
        video = self.mit(cls.view(B, T, -1))  # (B, E)
        tokens = self.prompts_visual_ln(tokens) @ self.prompts_visual_proj  # (B*T, N, E)
        return video, tokens.view(B, T, *tokens.shape[1:]).mean(dim=1)

    def condition_text(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, N, E) video tokens and (K, E) ``encode_text`` features -> (B, K, E): each text as seen by each video."""
        text = text.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, K, E)
        return text + self.prompts_generator(text, tokens)

    def logits(self, video: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, E) videos, their (B, N, E) tokens and (K, E) ``encode_text`` features -> (B, K) logits, each label's
        text conditioned on each video."""
        v = F.normalize(video.float(), dim=-1)
        t = F.normalize(self.condition_text(tokens, text).float(), dim=-1)
        return torch.einsum("bd,bkd->bk", v, t) * self.logit_scale.float().exp()

    def forward(self, frames: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        video, tokens = self.encode_video_tokens(frames)
        return self.logits(video, tokens, self.encode_text(token_ids))


# ---- transformers' layout -----------------------------------------------------------------------------------------

_HF_RENAMES = [  # (pattern on a transformers key, VideoX's key); then hf_layout's encoder-layer renames
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layernorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"^mit\.position_embedding$", "mit.positional_embedding"),
    (r"^mit\.encoder\.layers\.(\d+)\.", r"mit.resblocks.\1."),
    (r"^prompts_visual_layernorm\.", "prompts_visual_ln."),
    (r"^prompts_visual_projection$", "prompts_visual_proj"),
    (r"^prompts_generator\.layernorm\.", "prompts_generator.norm."),
]


def from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``XCLIPModel`` state dict -> VideoX's (our) names: q, k, v fused into ``in_proj`` (self and
    message attention; the prompt generator keeps separate ones), the two projections transposed."""
    projections = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
    out = rename_hf({k: v for k, v in sd.items() if k not in projections}, _HF_RENAMES)
    return out | {ours: sd[theirs].T for theirs, ours in projections.items() if theirs in sd}  # Linear -> x @ W
