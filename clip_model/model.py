"""CLIP in PyTorch: the attention-pooled ModifiedResNet, the Vision Transformer and the causal text transformer.

Parameter names follow openai/CLIP exactly, so OpenAI and open_clip state dicts load without renaming.
Attention runs through ``scaled_dot_product_attention`` (fused kernels), batch-first throughout.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig, config_from_state_dict
from .errors import CheckpointError, UserError


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, as OpenAI's CLIP does for fp16/bf16 weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, computed by SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, L, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, L, Dh)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, L, Dh)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    """fc -> GELU -> proj. CLIP: 4x wide, QuickGELU or exact GELU; SigLIP: its own width, tanh-approximated GELU."""

    def __init__(self, width: int, quick_gelu: bool, hidden: int | None = None, gelu_approximate: str = "none"):
        super().__init__()
        hidden = hidden or width * 4
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU(approximate=gelu_approximate)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block; ``mlp`` and ``eps`` are SigLIP's departures from CLIP (an MLP width, tanh GELU, eps 1e-6)."""

    def __init__(self, width: int, heads: int, quick_gelu: bool, mlp: tuple[int, str] | None = None,
                 eps: float = 1e-5):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, quick_gelu, *(mlp or (None, "none")))
        self.ln_2 = LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool, mlp: tuple[int, str] | None = None,
                 eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu, mlp, eps)
                                       for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool):
        super().__init__()
        width, patch, layers = cfg.width, cfg.patch_size, cfg.layers
        if not isinstance(layers, int) or patch is None:
            raise UserError(f"a ViT needs an int layer count and a patch_size; got layers={layers}, "
                             f"patch_size={patch}")
        self.grid = cfg.image_size // patch
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, cfg.heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, E)
        x = self.conv1(x)  # (B, W, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid**2, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, grid**2 + 1, W)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, E)


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling: stride is an avgpool before the last conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))
            self.downsample.add_module("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Single-query attention over the final feature map; the query is the mean-pooled feature."""

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, g, g) -> (B, E)
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, g*g+1, C)
        H, Dh = self.heads, C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, H, Dh).transpose(1, 2)  # (B, H, 1, Dh)
        k = self.k_proj(x).view(B, -1, H, Dh).transpose(1, 2)  # (B, H, g*g+1, Dh)
        v = self.v_proj(x).view(B, -1, H, Dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        return self.c_proj(out.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: a 3-conv stem with avgpool, anti-aliased strided blocks, attention pooling.

    Convolutions run channels-last (NHWC): on CPU (oneDNN) that is faster than NCHW, most at batch 8 and up
    (bench_model.py), with the same results to 1e-7. Its conv weights are therefore channels-last tensors; call
    ``.contiguous()`` on them before saving to formats that insist on a contiguous layout (safetensors).
    """

    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        if not isinstance(cfg.layers, tuple):
            raise UserError(f"a ModifiedResNet needs four stage block counts as layers, got {cfg.layers}")
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.heads, output_dim)
        self.to(memory_format=torch.channels_last)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, E)
        x = x.to(self.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))  # (B, W, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32W, S/32, S/32)
        return self.attnpool(x)


class CLIP(nn.Module):
    family = "clip"  # the family of weights nothing else is said of; a checkpoint's own is passed in

    def __init__(self, config: CLIPConfig, preprocess: PreprocessConfig | None = None, visual: nn.Module | None = None,
                 family: str | None = None):
        """``visual`` replaces the image tower the config describes (X-CLIP's cross-frame ViT); ``family``: the
        family whose protocol the weights follow (a CLIP fine-tuned for video: ViFi-CLIP, ActionCLIP)."""
        super().__init__()
        self.config = config
        self.family = family or type(self).family
        self.preprocess_config = preprocess or PreprocessConfig(image_size=config.vision.image_size)
        self.visual: nn.Module
        if visual is not None:
            self.visual = visual
        elif config.vision.is_resnet:
            self.visual = ModifiedResNet(config.vision, config.embed_dim)
        else:
            self.visual = VisionTransformer(config.vision, config.embed_dim, config.quick_gelu)
        t: TextConfig = config.text
        self.transformer = Transformer(t.width, t.layers, t.heads, config.quick_gelu)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation, used when training from scratch."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(lin.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for block in stage:
                    assert isinstance(block, Bottleneck)  # _make_layer builds stages of Bottlenecks only
                    nn.init.zeros_(block.bn3.weight)
        for tower in (self.transformer, getattr(self.visual, "transformer", None)):
            if tower is None:
                continue
            proj_std = (tower.width**-0.5) * ((2 * len(tower.resblocks)) ** -0.5)
            attn_std, fc_std = tower.width**-0.5, (2 * tower.width) ** -0.5
            for block in tower.resblocks:
                assert isinstance(block, ResidualAttentionBlock)  # Transformer holds only these
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, E) unnormalised embeddings."""
        return self.visual(images.to(self.dtype))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (K, context) ids for ``encode_text``: CLIP's BPE, cut to the context (what every job uses)."""
        from .tokenizer import tokenize

        return tokenize(list(texts), context_length=self.config.text.context_length, truncate=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) embeddings taken at each sequence's end-of-text token (its highest id).

        The mask is causal, so the EOT feature depends only on the tokens before it: the batch is run only up to
        its longest prompt, which gives the same features as all L positions at a fraction of the cost.
        """
        eot = tokens.argmax(dim=-1)  # (B,)
        n = int(eot.max()) + 1 if tokens.numel() else 1
        x = self.token_embedding(tokens[:, :n]).to(self.dtype)  # (B, n, D)
        x = x + self.positional_embedding[:n].to(self.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, D)
        return x @ self.text_projection  # (B, E)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities: (logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img))."""
        img = F.normalize(self.encode_image(images), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


def build_model(state_dict: dict[str, torch.Tensor], *, quick_gelu: bool = True) -> CLIP:
    """Build a CLIP from an OpenAI-layout state dict, reading the architecture from its shapes."""
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model = CLIP(config_from_state_dict(state_dict, quick_gelu=quick_gelu))
    load_state_dict_strict(model, state_dict, source="state dict")
    return model.eval()


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``sd`` into ``model``, listing every missing, unexpected or mis-shaped key in one error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(f"{source}: state dict does not fit the model: " + "; ".join(parts))
    model.load_state_dict(dict(sd), strict=True)
