"""The layouts a checkpoint may hold, recognised and read: our own format, ViFi-CLIP, ActionCLIP (both),
Open-VCLIP and FROSTER (``adapted``), X-CLIP (VideoX), transformers and open_clip folders, bare state dicts; and
the base-model lookup of the adapted ones."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import adapted
from ..config import (
    MODEL_CONFIGS,
    CLIPConfig,
    PreprocessConfig,
    check_recorded_protocol,
    config_from_state_dict,
)
from ..errors import CheckpointError
from ..siglip import SigLIPConfig
from ..siglip import from_hf as siglip_from_hf
from ..xclip import XCLIPConfig
from ..xclip import from_hf as xclip_from_hf

if TYPE_CHECKING:  # annotations only
    pass
from .containers import (
    FORMAT_TAG,
    HF_WEIGHTS,
    OPEN_CLIP_WEIGHTS,
    SIGLIP_TOKENIZERS,
    Checkpoint,
    _first_existing,
    detect_format,
    read_tensors,
    unwrap_state_dict,
)
from .conversions import (
    _hf_preprocess,
    _preprocess_from_hf,
    _read_json,
    config_from_hf,
    convert_hf,
    convert_open_clip,
    convert_openai,
)
from .ours import SAVED_FAMILIES, VIDEO_CLIP_FAMILIES, _saved_config


def _load_hf_family(model_type: str, hf: dict, raw: dict[str, torch.Tensor], folder: Path, weights: Path
                    ) -> Checkpoint:
    try:
        if model_type == "siglip":
            siglip = SigLIPConfig.from_hf(hf)
            preprocess = _hf_preprocess(folder, siglip.default_preprocess())
            tokenizer = next(((folder / name, variant) for name, variant in SIGLIP_TOKENIZERS
                              if (folder / name).is_file()), None)
            return Checkpoint(siglip_from_hf(raw), siglip, preprocess, "hf", tokenizer=tokenizer)
        xclip = XCLIPConfig.from_hf(hf)
        preprocess = _hf_preprocess(folder, xclip.default_preprocess())
        return Checkpoint(xclip_from_hf(raw), xclip, preprocess, "hf")
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a transformers {model_type} checkpoint: {e}") from None


def _load_hf(path: Path) -> Checkpoint:
    folder = path if path.is_dir() else path.parent
    weights = path if path.name in HF_WEIGHTS else _first_existing(folder, HF_WEIGHTS)
    if weights is None:
        raise CheckpointError(f"{folder}: Hugging Face config.json has no weights beside it (one of {HF_WEIGHTS})")
    hf = _read_json(folder / "config.json")
    model_type = hf.get("model_type", "clip")
    if model_type == "siglip2":
        raise CheckpointError(f"{folder}: a SigLIP 2 NaFlex checkpoint (Siglip2Model); only the fixed-resolution "
                              "ones (model_type siglip, e.g. google/siglip2-base-patch16-224) are supported")
    if model_type in ("siglip", "xclip"):
        return _load_hf_family(model_type, hf, unwrap_state_dict(read_tensors(weights), weights), folder, weights)
    if model_type not in ("clip", "clip_vision_model"):
        raise CheckpointError(f"{folder}: a transformers {model_type!r} model; supported: clip, siglip, xclip")
    config = config_from_hf(hf, folder / "config.json")
    raw = unwrap_state_dict(read_tensors(weights), weights)
    try:
        sd = convert_hf(raw, config)
    except KeyError as e:
        raise CheckpointError(f"{weights}: not a transformers CLIPModel state dict: missing key {e}") from None
    return Checkpoint(sd, config, _preprocess_from_hf(folder, config.vision.image_size), "hf")


def _load_open_clip_folder(path: Path) -> Checkpoint:
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else _first_existing(folder, OPEN_CLIP_WEIGHTS)
    if weights is None:
        raise CheckpointError(f"{folder}: open_clip_config.json has no weights beside it (one of {OPEN_CLIP_WEIGHTS})")
    meta = _read_json(folder / "open_clip_config.json")
    model_cfg, pp = meta.get("model_cfg", {}), meta.get("preprocess_cfg", {})
    sd = convert_open_clip(unwrap_state_dict(read_tensors(weights), weights))
    text = model_cfg.get("text_cfg", {})
    vision = model_cfg.get("vision_cfg", {})
    config = _infer_config(sd, weights, quick_gelu=bool(model_cfg.get("quick_gelu", False)),
                           text_heads=text.get("heads"),
                           vision_heads=(vision.get("width", 0) // vision["head_width"]) if "head_width" in vision else None)
    preprocess = PreprocessConfig(
        image_size=config.vision.image_size, mean=pp.get("mean", PreprocessConfig.mean),
        std=pp.get("std", PreprocessConfig.std), interpolation=pp.get("interpolation", "bicubic"),
    )
    return Checkpoint(sd, config, preprocess, "open_clip")


def _infer_config(sd: Mapping[str, torch.Tensor], path: Path, **kw: Any) -> CLIPConfig:
    try:
        return config_from_state_dict(sd, **kw)
    except KeyError as e:
        raise CheckpointError(f"{path}: not a CLIP checkpoint: {e.args[0]}; top-level keys start {sorted(sd)[:5]}") from None


def _from_object(obj: Any, path: Path, fmt: str, quick_gelu: bool | None, base: str | Path | None = None,
                 ratio: float | None = None) -> Checkpoint:
    """Our self-describing checkpoint, a layout of ``adapted`` (ViFi-CLIP, ActionCLIP, Open-VCLIP, FROSTER), or a
    bare OpenAI/open_clip-layout state dict (any wrapper)."""
    found = _adapted(obj, path, base, ratio)
    if found is not None:
        return found
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_TAG:
        family = obj.get("family", "clip")  # version 1 files were all plain CLIPs
        if family not in SAVED_FAMILIES:
            raise CheckpointError(f"{path}: clip_video checkpoint of unknown family {family!r} (known: "
                                  f"{', '.join(SAVED_FAMILIES)})")
        try:
            config = _saved_config(family, obj["config"])
            preprocess = PreprocessConfig(**obj["preprocess"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt clip_video checkpoint config: {e}") from None
        temporal = obj.get("temporal")
        if temporal is not None and not (isinstance(temporal, Mapping) and {"config", "state_dict"} <= set(temporal)):
            raise CheckpointError(f"{path}: corrupt clip_video checkpoint: 'temporal' needs a config and a state_dict")
        protocol = obj.get("protocol")
        if protocol is not None and (problem := check_recorded_protocol(protocol)):
            raise CheckpointError(f"{path}: corrupt clip_video checkpoint: {problem}")
        tokenizer = obj.get("tokenizer")
        if tokenizer is not None and not (isinstance(tokenizer, Mapping) and isinstance(tokenizer.get("model"),
                                                                                         torch.Tensor)):
            raise CheckpointError(f"{path}: corrupt clip_video checkpoint: 'tokenizer' needs its model bytes")
        return Checkpoint(unwrap_state_dict(obj, path), config, preprocess, "clip_video", temporal,
                          (tokenizer["model"].numpy().tobytes(), tokenizer["variant"]) if tokenizer else None,
                          family if family in VIDEO_CLIP_FAMILIES else None, protocol=protocol)
    sd = unwrap_state_dict(obj, path)
    if any(k.startswith("text_model.") for k in sd):
        raise CheckpointError(
            f"{path}: Hugging Face weights need their config.json: pass the folder holding both"
        )
    if "mit.positional_embedding" in sd and "prompts_visual_proj" in sd:  # VideoX's X-CLIP
        try:
            xclip = XCLIPConfig.from_state_dict(sd)
            return Checkpoint(sd, xclip, xclip.default_preprocess(), "videox")
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: an incomplete X-CLIP (VideoX) checkpoint: {e}") from None
    sd = convert_open_clip(sd) if any(k.startswith("text.") for k in sd) else convert_openai(sd)
    config = _infer_config(sd, path, quick_gelu=True if quick_gelu is None else quick_gelu)
    return Checkpoint(sd, config, PreprocessConfig(image_size=config.vision.image_size), fmt)


def read_checkpoint(path: str | Path, *, quick_gelu: bool | None = None, base: str | Path | None = None,
                    ratio: float | None = None) -> Checkpoint:
    """Read any supported checkpoint into an OpenAI-layout state dict with its config.

    ``quick_gelu`` only matters for bare state dicts, whose activation shapes cannot reveal: OpenAI's weights use
    QuickGELU (the default); most open_clip-trained ones use GELU. ``base`` is the CLIP a ViFi-CLIP or Open-VCLIP
    checkpoint was tuned from (default: ``$CLIP_VIDEO_BASE_MODEL``, else the published model of its architecture);
    ``ratio`` is Open-VCLIP's interpolation weight of that CLIP (default: its test scripts' value).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "hf":
        ckpt = _load_hf(path)
    elif fmt == "open_clip":
        ckpt = _load_open_clip_folder(path)
    else:
        ckpt = _from_object(read_tensors(path), path, fmt, quick_gelu, base, ratio)
    if quick_gelu is not None and isinstance(ckpt.config, CLIPConfig) and ckpt.config.quick_gelu != quick_gelu:
        ckpt = dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, quick_gelu=quick_gelu))
    return ckpt



def _adapted(obj: Any, path: Path, base: str | Path | None, ratio: float | None) -> Checkpoint | None:
    """A ViFi-CLIP, ActionCLIP (original or mmaction2), Open-VCLIP or FROSTER checkpoint, or None."""
    if not isinstance(obj, Mapping):
        return None
    try:
        if "model_state_dict" in obj and "fusion_model_state_dict" in obj:  # ActionCLIP's own
            clip = unwrap_state_dict(obj["model_state_dict"], path)
            fusion = unwrap_state_dict(obj["fusion_model_state_dict"], path)
            return _adapted_checkpoint("actionclip", clip, path, temporal=adapted.actionclip_head(fusion, 1e-12))
        inner = obj.get("state_dict")
        if isinstance(inner, Mapping) and any(k.startswith("adapter.") for k in inner):  # mmaction2's port
            clip = {k[len("clip."):]: v for k, v in inner.items() if k.startswith("clip.")}
            fusion = {k[len("adapter."):]: v for k, v in inner.items() if k.startswith("adapter.")}
            return _adapted_checkpoint("actionclip", clip, path, temporal=adapted.actionclip_head(fusion, 1e-5),
                                       layout="mmaction2")
        inner = obj.get("model_state")
        if isinstance(inner, Mapping) and any(k.removeprefix("module.").startswith("model.visual.") for k in inner):
            sd, froster = adapted.from_openvclip(inner)
            family = "froster" if froster else "openvclip"
            config = _infer_config(sd, path, quick_gelu=True)
            r = (0.0 if froster else None) if ratio is None else ratio  # FROSTER's tests do not interpolate
            if r != 0.0:
                name = _published_name(config)
                r = adapted.OPENVCLIP_RATIO.get(name or "", 0.5) if r is None else r
                original = _base_state_dict(config, base, path, "Open-VCLIP interpolates it")
                sd = adapted.interpolate(sd, original, r)
                # its test builds the label texts from the original CLIP before loading the checkpoint
                # (temporalclip_video_model.py); the released text tower equals it, a user's ratio must not move it
                sd |= {k: v.float() for k, v in original.items() if not k.startswith("visual.") and k != "logit_scale"}
            return _adapted_checkpoint(family, sd, path, config=config)
        inner = obj.get("model")
        if isinstance(inner, Mapping):
            sd = unwrap_state_dict(inner, path)
            if adapted.is_vificlip(sd):
                placeholder = torch.zeros(49408, sd["text_encoder.ln_final.weight"].shape[0])  # CLIP's vocabulary
                config = _infer_config(adapted.from_vificlip(sd, placeholder), path, quick_gelu=True)
                token = _base_state_dict(config, base, path, "ViFi-CLIP's checkpoint lacks its token embedding")
                return _adapted_checkpoint("vificlip", adapted.from_vificlip(sd, token["token_embedding.weight"]),
                                           path)
    except KeyError as e:
        raise CheckpointError(f"{path}: an incomplete checkpoint of a video CLIP: missing {e}") from None
    return None


def _adapted_checkpoint(family: str, sd: dict[str, torch.Tensor], path: Path, config: CLIPConfig | None = None,
                        temporal: Mapping[str, Any] | None = None, layout: str = "") -> Checkpoint:
    sd = convert_openai(sd)
    config = config or _infer_config(sd, path, quick_gelu=True)
    preprocess = adapted.family_preprocess(family, config.vision.image_size, layout)
    return Checkpoint(sd, config, preprocess, family, temporal=temporal, family=family)


def _published_name(config: CLIPConfig) -> str | None:
    return next((name for name, c in MODEL_CONFIGS.items() if c == config), None)


def _base_state_dict(config: CLIPConfig, base: str | Path | None, path: Path, why: str) -> dict[str, torch.Tensor]:
    """The original CLIP of ``config``'s architecture: ``base`` (or $CLIP_VIDEO_BASE_MODEL) if given, else the
    published model of that architecture, downloaded once and SHA256-checked."""
    import os

    from ..download import model_path

    base = base or os.environ.get("CLIP_VIDEO_BASE_MODEL") or None
    if base is None:
        name = _published_name(config)
        if name is None:
            raise CheckpointError(f"{path}: {why}, and its architecture is no published CLIP: pass the original "
                                  "CLIP's checkpoint as base= (or $CLIP_VIDEO_BASE_MODEL)")
        try:
            base = model_path(name)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {why}: it needs OpenAI's {name} ({e})") from None
    original = read_checkpoint(base)
    if not isinstance(original.config, CLIPConfig) or original.family is not None:
        raise CheckpointError(f"{base}: the base of {path} must be a plain CLIP checkpoint")
    if original.config.text.width != config.text.width or original.config.vision != config.vision:
        raise CheckpointError(f"{base}: its architecture does not match {path}'s (the CLIP it was tuned from?)")
    return original.state_dict
