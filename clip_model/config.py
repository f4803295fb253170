"""Frozen configuration dataclasses for CLIP, and inference of a config from a state dict.

A checkpoint needs no side config: like openai/CLIP's ``build_model``, the architecture is read from tensor shapes.
The only facts that shapes cannot tell are the attention head counts (OpenAI always uses 64-wide heads) and the
MLP activation (OpenAI's weights use QuickGELU, most later ones plain GELU); both are fields here.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64


# what a clip_video checkpoint may record of how it is meant to be used, in place of its family's defaults (the
# pipeline's family table): the pooling it trained, the frames of its clips, the prompt forms of its captions
RECORDED_PROTOCOL = ("pooling", "frames", "templates")


def check_recorded_protocol(protocol: Any) -> str | None:
    """What is wrong with a checkpoint's recorded protocol, or None: a mapping of ``RECORDED_PROTOCOL`` keys to a
    pooling name, a frame count >= 1, and a list of templates each holding ``{}`` (None: the family's)."""
    if not isinstance(protocol, Mapping) or not set(protocol) <= set(RECORDED_PROTOCOL):
        return f"'protocol' must map {', '.join(RECORDED_PROTOCOL)} to values, got {protocol!r}"
    pooling, frames, templates = (protocol.get(k) for k in RECORDED_PROTOCOL)
    if pooling is not None and pooling not in ("mean", "max", "temporal", "mean_of_unit"):
        return f"pooling {pooling!r} is not mean, max, temporal or mean_of_unit"
    if frames is not None and (not isinstance(frames, int) or frames < 1):
        return f"frames {frames!r} is not a count >= 1"
    if templates is not None and (not isinstance(templates, (list, tuple)) or not templates
                                  or not all(isinstance(t, str) and "{}" in t for t in templates)):
        return "templates must be a list of strings, each holding '{}'"
    return None


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``layers`` is an int for a ViT and four block counts for a ModifiedResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    heads: int = 12
    patch_size: int | None = 32

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):  # from JSON/YAML
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.layers, tuple):  # a ResNet (``is_resnet``), spelled out so the type checker sees the tuple
            if len(self.layers) != 4:
                raise UserError(f"ResNet vision layers must have 4 stage counts, got {self.layers}")
            if self.image_size % 32:
                raise UserError(f"ResNet image_size ({self.image_size}) must be a multiple of 32")
        else:
            if not self.patch_size or self.image_size % self.patch_size:
                raise UserError(
                    f"ViT image_size ({self.image_size}) must be a positive multiple of patch_size ({self.patch_size})"
                )
        embed = self.width * 32 if self.is_resnet else self.width
        if self.heads < 1 or embed % self.heads:
            raise UserError(f"vision heads ({self.heads}) must divide the attention width ({embed})")

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer; features are read at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12

    def __post_init__(self) -> None:
        if self.heads < 1 or self.width % self.heads:
            raise UserError(f"text heads ({self.heads}) must divide text width ({self.width})")


@dataclass(frozen=True)
class PreprocessConfig:
    """CLIP's image transform: resize the short side, centre-crop, normalise. Travels with the weights."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize: str = "shortest"  # "shortest": short side to image_size, then a centre crop; "squash": straight to S x S
    resize_to: int | None = None  # "shortest": the short side before the crop, if not image_size (ViFi-CLIP: 256)
    antialias: bool = True  # PIL-like (CLIP); False where a family's own test resizes with plain interpolation

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in ("bicubic", "bilinear"):
            raise UserError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.resize not in ("shortest", "squash"):
            raise UserError(f"resize must be 'shortest' or 'squash', got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError(f"mean and std need 3 channels, got {self.mean} and {self.std}")
        if self.resize_to is not None and self.resize_to < self.image_size:
            raise UserError(f"resize_to ({self.resize_to}) must be at least image_size ({self.image_size})")


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown CLIPConfig keys {sorted(unknown)}; valid keys are {sorted(known)}")
        return cls(
            embed_dim=int(d["embed_dim"]),
            vision=VisionConfig(**d["vision"]),
            text=TextConfig(**d["text"]),
            quick_gelu=bool(d.get("quick_gelu", True)),
        )


def _vit(image_size: int, layers: int, width: int, patch: int) -> VisionConfig:
    return VisionConfig(image_size=image_size, layers=layers, width=width, heads=width // HEAD_WIDTH, patch_size=patch)


def _resnet(image_size: int, layers: tuple[int, int, int, int], width: int) -> VisionConfig:
    return VisionConfig(image_size=image_size, layers=layers, width=width, heads=width * 32 // HEAD_WIDTH, patch_size=None)


def _text(width: int, layers: int = 12) -> TextConfig:
    return TextConfig(width=width, heads=width // HEAD_WIDTH, layers=layers)


# The published OpenAI architectures (openai/CLIP model card), plus tiny ones for tests and the demo.
MODEL_CONFIGS: dict[str, CLIPConfig] = {
    "RN50": CLIPConfig(1024, _resnet(224, (3, 4, 6, 3), 64), _text(512)),
    "RN101": CLIPConfig(512, _resnet(224, (3, 4, 23, 3), 64), _text(512)),
    "RN50x4": CLIPConfig(640, _resnet(288, (4, 6, 10, 6), 80), _text(640)),
    "RN50x16": CLIPConfig(768, _resnet(384, (6, 8, 18, 8), 96), _text(768)),
    "RN50x64": CLIPConfig(1024, _resnet(448, (3, 15, 36, 10), 128), _text(1024)),
    "ViT-B/32": CLIPConfig(512, _vit(224, 12, 768, 32), _text(512)),
    "ViT-B/16": CLIPConfig(512, _vit(224, 12, 768, 16), _text(512)),
    "ViT-L/14": CLIPConfig(768, _vit(224, 24, 1024, 14), _text(768)),
    "ViT-L/14@336px": CLIPConfig(768, _vit(336, 24, 1024, 14), _text(768)),
    "tiny-vit": CLIPConfig(
        64, VisionConfig(image_size=32, layers=2, width=64, heads=2, patch_size=8),
        TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
    "tiny-rn": CLIPConfig(
        64, VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8, patch_size=None),
        TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
}


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPConfig:
    """Infer the architecture of an OpenAI-layout CLIP state dict from its tensor shapes.

    Head counts default to OpenAI's rule (64-wide heads); pass them when a checkpoint used another width.
    """
    sd = state_dict
    required = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise KeyError(f"not an OpenAI-layout CLIP state dict: missing {missing}")
    if "visual.proj" in sd:  # ViT
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=patch * grid, layers=_count_blocks(sd, "visual.transformer.resblocks."),
            width=width, heads=vision_heads or max(1, width // HEAD_WIDTH), patch_size=patch,
        )
    elif "visual.attnpool.positional_embedding" in sd:  # ModifiedResNet
        l1, l2, l3, l4 = (_count_blocks(sd, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=grid * 32, layers=(l1, l2, l3, l4), width=width,
            heads=vision_heads or max(1, width * 32 // HEAD_WIDTH), patch_size=None,
        )
    else:
        raise KeyError("not an OpenAI-layout CLIP state dict: no 'visual.proj' (ViT) or 'visual.attnpool.*' (ResNet)")
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=text_heads or max(1, text_width // HEAD_WIDTH),
        layers=_count_blocks(sd, "transformer.resblocks."),
    )
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text, quick_gelu=quick_gelu)
