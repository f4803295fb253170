"""Conversions of other projects' layouts to ours: OpenAI's, open_clip's and transformers' CLIP, and a
transformers folder's config and preprocessing."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import (
    CLIPConfig,
    PreprocessConfig,
    TextConfig,
    VisionConfig,
    config_from_state_dict,
)
from ..errors import CheckpointError, UserError
from ..hf_layout import HF_LAYER
from .containers import NON_WEIGHT_KEYS


def convert_openai(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's state dict is our layout; drop the integer bookkeeping entries of the JIT archives."""
    return {k: v for k, v in sd.items() if k not in NON_WEIGHT_KEYS}


def convert_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's CLIP shares OpenAI's names; its CustomTextCLIP nests the text tower under ``text.``."""
    return convert_openai({k[len("text."):] if k.startswith("text.") else k: v for k, v in sd.items()})


def _convert_hf_layers(sd: Mapping[str, torch.Tensor], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}attn.in_proj_{kind}"] = torch.cat([sd[f"{s}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for hf, ours in HF_LAYER.items():
                out[f"{d}{ours}.{kind}"] = sd[f"{s}{hf}.{kind}"]
    return out


def convert_hf(sd: Mapping[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers' CLIPModel -> OpenAI layout: fuse q/k/v, rename, and transpose the two projections."""
    if not isinstance(config.vision.layers, int):
        raise UserError(f"transformers' CLIPModel has a ViT image tower only; config has ResNet layers "
                         f"{config.vision.layers}")
    v, t = "vision_model.", "text_model."
    out = {
        "token_embedding.weight": sd[f"{t}embeddings.token_embedding.weight"],
        "positional_embedding": sd[f"{t}embeddings.position_embedding.weight"],
        "ln_final.weight": sd[f"{t}final_layer_norm.weight"],
        "ln_final.bias": sd[f"{t}final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),
        "visual.class_embedding": sd[f"{v}embeddings.class_embedding"],
        "visual.conv1.weight": sd[f"{v}embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd[f"{v}embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd[f"{v}pre_layrnorm.weight"],  # sic: transformers' spelling
        "visual.ln_pre.bias": sd[f"{v}pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[f"{v}post_layernorm.weight"],
        "visual.ln_post.bias": sd[f"{v}post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
    }
    out |= _convert_hf_layers(sd, "text_model", "transformer", config.text.layers)
    out |= _convert_hf_layers(sd, "vision_model", "visual.transformer", config.vision.layers)
    return out


def config_from_hf(hf: Mapping[str, Any], path: Path) -> CLIPConfig:
    """Our config from a transformers ``CLIPConfig`` JSON (ViT image towers only, as in transformers)."""
    tc, vc = hf.get("text_config") or {}, hf.get("vision_config") or {}
    acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
    if not acts <= {"quick_gelu", "gelu"} or len(acts) != 1:
        raise CheckpointError(f"{path}: unsupported hidden_act {sorted(acts)}; both towers must use quick_gelu or gelu")
    vw, tw = vc.get("hidden_size", 768), tc.get("hidden_size", 512)
    return CLIPConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=VisionConfig(
            image_size=vc.get("image_size", 224), layers=vc.get("num_hidden_layers", 12), width=vw,
            heads=vc.get("num_attention_heads", 12), patch_size=vc.get("patch_size", 32),
        ),
        text=TextConfig(
            context_length=tc.get("max_position_embeddings", 77), vocab_size=tc.get("vocab_size", 49408), width=tw,
            heads=tc.get("num_attention_heads", 8), layers=tc.get("num_hidden_layers", 12),
        ),
        quick_gelu=acts == {"quick_gelu"},
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from None


def hf_preprocess(folder: Path, default: PreprocessConfig) -> PreprocessConfig:
    """The architecture's ``default`` as a transformers folder's preprocessor_config.json amends it: mean/std and
    resampling (PIL's 2 bilinear, 3 bicubic)."""
    pp = _read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    return dataclasses.replace(
        default, mean=pp.get("image_mean", default.mean), std=pp.get("image_std", default.std),
        interpolation={2: "bilinear", 3: "bicubic"}.get(pp.get("resample", 0), default.interpolation))


def infer_config(sd: Mapping[str, torch.Tensor], path: Path, **kw: Any) -> CLIPConfig:
    """``config_from_state_dict``, its error naming the file."""
    try:
        return config_from_state_dict(sd, **kw)
    except KeyError as e:
        raise CheckpointError(f"{path}: not a CLIP checkpoint: {e.args[0]}; top-level keys start {sorted(sd)[:5]}") from None
