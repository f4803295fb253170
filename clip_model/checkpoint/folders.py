"""Checkpoint folders: a transformers model (``config.json`` beside its weights; CLIPModel, SiglipModel or
XCLIPModel by its ``model_type``) and an open_clip hub folder (``open_clip_config.json`` beside its weights)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import PreprocessConfig
from ..errors import CheckpointError
from ..siglip import SigLIPConfig
from ..siglip import from_hf as siglip_from_hf
from ..xclip import XCLIPConfig
from ..xclip import from_hf as xclip_from_hf
from .containers import (
    HF_WEIGHTS,
    OPEN_CLIP_WEIGHTS,
    SIGLIP_TOKENIZERS,
    Checkpoint,
    Source,
    _first_existing,
    read_tensors,
    unwrap_state_dict,
)
from .conversions import _read_json, config_from_hf, convert_hf, convert_open_clip, hf_preprocess, infer_config

HF_CLIP_TYPES = ("clip", "clip_vision_model")


def hf_model_type(source: Source) -> str | None:
    """A transformers folder's model type (None for other formats)."""
    return source.hf_config.get("model_type", "clip") if source.format == "hf" else None


def _hf_weights(source: Source) -> tuple[Path, dict[str, torch.Tensor]]:
    path, folder = source.path, source.folder
    weights = path if path.name in HF_WEIGHTS else _first_existing(folder, HF_WEIGHTS)
    if weights is None:
        raise CheckpointError(f"{folder}: Hugging Face config.json has no weights beside it (one of {HF_WEIGHTS})")
    return weights, unwrap_state_dict(read_tensors(weights), weights)


def read_hf_clip(source: Source) -> Checkpoint:
    """transformers' CLIPModel (or its vision tower)."""
    weights, raw = _hf_weights(source)
    config = config_from_hf(source.hf_config, source.folder / "config.json")
    try:
        sd = convert_hf(raw, config)
    except KeyError as e:
        raise CheckpointError(f"{weights}: not a transformers CLIPModel state dict: missing key {e}") from None
    preprocess = hf_preprocess(source.folder, PreprocessConfig(image_size=config.vision.image_size))
    return Checkpoint(sd, config, preprocess, "hf", "")


def _hf_tower(source: Source, what: str, read_config: Callable[[dict], Any],
              convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> tuple[Any, dict]:
    """(config, our state dict) of a transformers folder, an error naming the weights file where either fails."""
    weights, raw = _hf_weights(source)
    try:
        return read_config(source.hf_config), convert(raw)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a transformers {what} checkpoint: {e}") from None


def read_hf_siglip(source: Source) -> Checkpoint:
    """transformers' SiglipModel (SigLIP, and SigLIP 2 at a fixed resolution), with its SentencePiece model."""
    siglip, sd = _hf_tower(source, "siglip", SigLIPConfig.from_hf, siglip_from_hf)
    folder = source.folder
    tokenizer = next(((folder / name, variant) for name, variant in SIGLIP_TOKENIZERS if (folder / name).is_file()),
                     None)
    return Checkpoint(sd, siglip, hf_preprocess(folder, siglip.default_preprocess()), "hf", "",
                      architecture="SigLIP", tokenizer=tokenizer)


def read_hf_xclip(source: Source) -> Checkpoint:
    """transformers' XCLIPModel."""
    xclip, sd = _hf_tower(source, "xclip", XCLIPConfig.from_hf, xclip_from_hf)
    return Checkpoint(sd, xclip, hf_preprocess(source.folder, xclip.default_preprocess()), "hf", "",
                      architecture="XCLIP")


def refuse_hf(source: Source) -> Checkpoint:
    """A transformers folder of a model type none of the readers above takes."""
    model_type = hf_model_type(source)
    if model_type == "siglip2":
        raise CheckpointError(f"{source.folder}: a SigLIP 2 NaFlex checkpoint (Siglip2Model); only the "
                              "fixed-resolution ones (model_type siglip, e.g. google/siglip2-base-patch16-224) are "
                              "supported")
    raise CheckpointError(f"{source.folder}: a transformers {model_type!r} model; supported: "
                          f"{', '.join((*HF_CLIP_TYPES, 'siglip', 'xclip'))}")


def read_open_clip_folder(source: Source) -> Checkpoint:
    """An open_clip hub folder: its model and preprocessing config beside the weights."""
    path, folder = source.path, source.folder
    weights = path if path.is_file() else _first_existing(folder, OPEN_CLIP_WEIGHTS)
    if weights is None:
        raise CheckpointError(f"{folder}: open_clip_config.json has no weights beside it (one of {OPEN_CLIP_WEIGHTS})")
    meta = _read_json(folder / "open_clip_config.json")
    model_cfg, pp = meta.get("model_cfg", {}), meta.get("preprocess_cfg", {})
    sd = convert_open_clip(unwrap_state_dict(read_tensors(weights), weights))
    text = model_cfg.get("text_cfg", {})
    vision = model_cfg.get("vision_cfg", {})
    config = infer_config(sd, weights, quick_gelu=bool(model_cfg.get("quick_gelu", False)),
                          text_heads=text.get("heads"),
                          vision_heads=(vision.get("width", 0) // vision["head_width"]) if "head_width" in vision else None)
    preprocess = PreprocessConfig(
        image_size=config.vision.image_size, mean=pp.get("mean", PreprocessConfig.mean),
        std=pp.get("std", PreprocessConfig.std), interpolation=pp.get("interpolation", "bicubic"),
    )
    return Checkpoint(sd, config, preprocess, "open_clip", "")
