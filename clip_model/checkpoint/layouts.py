"""What a checkpoint holds, recognised in one ordered list (``LAYOUTS``): each layout is a name, a test on the
``Source`` (its format, its keys) and a reader into a ``Checkpoint``. The first layout whose test passes reads
the file; a file no layout takes gets an error listing them all. A layout names the family whose protocol its
weights follow (our own format stores its own); this list and the pipeline's family table are the only places
family names are spelled.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import adapted
from ..config import CLIPConfig, PreprocessConfig
from ..errors import CheckpointError
from ..xclip import XCLIPConfig
from .base import base_state_dict, published_name
from .containers import Checkpoint, Source, detect_format, unwrap_state_dict
from .conversions import convert_open_clip, convert_openai, infer_config
from .folders import (
    HF_CLIP_TYPES,
    hf_model_type,
    read_hf_clip,
    read_hf_siglip,
    read_hf_xclip,
    read_open_clip_folder,
    refuse_hf,
)
from .ours import is_ours, read_ours

# Open-VCLIP's test scripts: TEST.PATCHING_RATIO (the original CLIP's share) per backbone
OPENVCLIP_RATIO = {"ViT-B/16": 0.5, "ViT-B/32": 0.5, "ViT-L/14": 0.6}


OPENAI_PREFIXES = ("visual.", "transformer.", "token_embedding.", "text_projection", "ln_final.")


@dataclass(frozen=True)
class Layout:
    name: str
    matches: Callable[[Source], bool]
    read: Callable[[Source], Checkpoint]
    family: str | None = None  # the family its weights follow; None: the reader's (our format stores it)


def _is_file(source: Source) -> bool:
    return source.format in ("pickle", "safetensors", "torchscript")


def _inner(source: Source, key: str) -> Mapping[str, Any] | None:
    """``contents[key]`` where the file is a mapping holding a mapping there."""
    obj = source.contents if _is_file(source) else None
    inner = obj.get(key) if isinstance(obj, Mapping) else None
    return inner if isinstance(inner, Mapping) else None


def _keys(source: Source) -> set[str]:
    return set(source.state_dict or ()) if _is_file(source) else set()


def _video_clip(sd: dict[str, torch.Tensor], source: Source, preprocess: Callable[[int], PreprocessConfig],
                config: CLIPConfig | None = None, temporal: Mapping[str, Any] | None = None) -> Checkpoint:
    sd = convert_openai(sd)
    config = config or infer_config(sd, source.path, quick_gelu=True)
    return Checkpoint(sd, config, preprocess(config.vision.image_size), source.format, "", temporal=temporal)


# ---- readers, one per layout ---------------------------------------------------------------------------------------


def _read_actionclip(source: Source) -> Checkpoint:
    obj = source.contents
    clip = unwrap_state_dict(obj["model_state_dict"], source.path)
    fusion = unwrap_state_dict(obj["fusion_model_state_dict"], source.path)
    return _video_clip(clip, source, adapted.actionclip_preprocess, temporal=adapted.actionclip_head(fusion, 1e-12))


def _read_mmaction2_actionclip(source: Source) -> Checkpoint:
    inner = _inner(source, "state_dict") or {}
    clip = {k[len("clip."):]: v for k, v in inner.items() if k.startswith("clip.")}
    fusion = {k[len("adapter."):]: v for k, v in inner.items() if k.startswith("adapter.")}
    return _video_clip(clip, source, adapted.mmaction2_actionclip_preprocess,
                       temporal=adapted.actionclip_head(fusion, 1e-5))


def _is_openvclip_state(source: Source) -> bool:
    inner = _inner(source, "model_state")
    return inner is not None and any(k.removeprefix("module.").startswith("model.visual.") for k in inner)


def _has_projectors(source: Source) -> bool:
    return any(k.removeprefix("module.").startswith("projector_") for k in _inner(source, "model_state") or {})


def _read_openvclip(source: Source, default_ratio: float | None) -> Checkpoint:
    """Open-VCLIP's (or FROSTER's) ``model_state``, interpolated with the original CLIP at ``source.ratio`` (None:
    ``default_ratio``; None again: its test scripts' value for the architecture; 0: not interpolated)."""
    sd = adapted.from_openvclip(_inner(source, "model_state") or {})
    config = infer_config(sd, source.path, quick_gelu=True)
    ratio = default_ratio if source.ratio is None else source.ratio
    if ratio != 0.0:
        ratio = OPENVCLIP_RATIO.get(published_name(config) or "", 0.5) if ratio is None else ratio
        original = base_state_dict(config, source.base, source.path, "Open-VCLIP interpolates it", source.read)
        sd = adapted.interpolate(sd, original, ratio)
        # its test builds the label texts from the original CLIP before loading the checkpoint
        # (temporalclip_video_model.py); the released text tower equals it, a user's ratio must not move it
        sd |= {k: v.float() for k, v in original.items() if not k.startswith("visual.") and k != "logit_scale"}
    ckpt = _video_clip(sd, source, adapted.openvclip_preprocess, config=config)
    return dataclasses.replace(ckpt, architecture="OpenVCLIP")


def _is_vificlip(source: Source) -> bool:
    inner = _inner(source, "model")
    return inner is not None and adapted.is_vificlip([str(k).removeprefix("module.") for k in inner])


def _read_vificlip(source: Source) -> Checkpoint:
    sd = unwrap_state_dict(_inner(source, "model"), source.path)
    placeholder = torch.zeros(49408, sd["text_encoder.ln_final.weight"].shape[0])  # CLIP's vocabulary
    config = infer_config(adapted.from_vificlip(sd, placeholder), source.path, quick_gelu=True)
    token = base_state_dict(config, source.base, source.path, "ViFi-CLIP's checkpoint lacks its token embedding",
                            source.read)
    return _video_clip(adapted.from_vificlip(sd, token["token_embedding.weight"]), source,
                       adapted.vificlip_preprocess, config=config)


def _read_videox(source: Source) -> Checkpoint:
    sd = unwrap_state_dict(source.contents, source.path)
    try:
        xclip = XCLIPConfig.from_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source.path}: an incomplete X-CLIP (VideoX) checkpoint: {e}") from None
    return Checkpoint(sd, xclip, xclip.default_preprocess(), source.format, "", architecture="XCLIP")


def _refuse_bare_hf(source: Source) -> Checkpoint:
    raise CheckpointError(f"{source.path}: Hugging Face weights need their config.json: pass the folder holding both")


def _read_bare(convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
               ) -> Callable[[Source], Checkpoint]:
    def read(source: Source) -> Checkpoint:
        sd = convert(unwrap_state_dict(source.contents, source.path))
        quick_gelu = True if source.quick_gelu is None else source.quick_gelu
        config = infer_config(sd, source.path, quick_gelu=quick_gelu)
        return Checkpoint(sd, config, PreprocessConfig(image_size=config.vision.image_size), source.format, "")
    return read


LAYOUTS: list[Layout] = [
    Layout("clip_video", lambda s: _is_file(s) and is_ours(s.contents), read_ours),
    Layout("transformers clip", lambda s: hf_model_type(s) in HF_CLIP_TYPES, read_hf_clip, "clip"),
    Layout("transformers siglip", lambda s: hf_model_type(s) == "siglip", read_hf_siglip, "siglip"),
    Layout("transformers xclip", lambda s: hf_model_type(s) == "xclip", read_hf_xclip, "xclip"),
    Layout("transformers, another model", lambda s: s.format == "hf", refuse_hf),
    Layout("open_clip folder", lambda s: s.format == "open_clip", read_open_clip_folder, "clip"),
    Layout("actionclip", lambda s: _is_file(s) and isinstance(s.contents, Mapping)
           and {"model_state_dict", "fusion_model_state_dict"} <= set(s.contents), _read_actionclip, "actionclip"),
    Layout("actionclip (mmaction2)", lambda s: any(k.startswith("adapter.") for k in _inner(s, "state_dict") or {}),
           _read_mmaction2_actionclip, "actionclip"),
    Layout("froster", lambda s: _is_openvclip_state(s) and _has_projectors(s),
           lambda s: _read_openvclip(s, 0.0), "froster"),  # FROSTER's tests do not interpolate
    Layout("openvclip", _is_openvclip_state, lambda s: _read_openvclip(s, None), "openvclip"),
    Layout("vificlip", _is_vificlip, _read_vificlip, "vificlip"),
    Layout("x-clip (VideoX)", lambda s: {"mit.positional_embedding", "prompts_visual_proj"} <= _keys(s), _read_videox,
           "xclip"),
    Layout("transformers weights without config.json", lambda s: any(k.startswith("text_model.") for k in _keys(s)),
           _refuse_bare_hf),
    Layout("open_clip state dict", lambda s: any(k.startswith("text.") for k in _keys(s)),
           _read_bare(convert_open_clip), "clip"),
    Layout("openai state dict", lambda s: any(k.startswith(OPENAI_PREFIXES) for k in _keys(s)),
           _read_bare(convert_openai), "clip"),
]


def read_checkpoint(path: str | Path, *, quick_gelu: bool | None = None, base: str | Path | None = None,
                    ratio: float | None = None) -> Checkpoint:
    """Read any supported checkpoint into our layout with its config, family and preprocessing.

    ``quick_gelu`` only matters for bare state dicts, whose activation shapes cannot reveal: OpenAI's weights use
    QuickGELU (the default); most open_clip-trained ones use GELU. ``base`` is the CLIP a ViFi-CLIP or Open-VCLIP
    checkpoint was tuned from (default: ``$CLIP_VIDEO_BASE_MODEL``, else the published model of its architecture);
    ``ratio`` is Open-VCLIP's interpolation weight of that CLIP (default: its test scripts' value).
    """
    path = Path(path)
    source = Source(path, detect_format(path), read_checkpoint, quick_gelu, base, ratio)
    layout = next((layout for layout in LAYOUTS if _matches(layout, source)), None)
    if layout is None:
        if _is_file(source):
            unwrap_state_dict(source.contents, path)  # raises its own error where there is no state dict at all
        raise CheckpointError(f"{path}: no known checkpoint layout holds it (known: "
                              f"{', '.join(layout.name for layout in LAYOUTS)})")
    try:
        ckpt = layout.read(source)
    except KeyError as e:
        raise CheckpointError(f"{path}: an incomplete {layout.name} checkpoint: missing {e}") from None
    ckpt = dataclasses.replace(ckpt, layout=layout.name, family=layout.family or ckpt.family)
    if quick_gelu is not None and isinstance(ckpt.config, CLIPConfig) and ckpt.config.quick_gelu != quick_gelu:
        ckpt = dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, quick_gelu=quick_gelu))
    return ckpt


def _matches(layout: Layout, source: Source) -> bool:
    try:
        return layout.matches(source)
    except KeyError:
        return False
