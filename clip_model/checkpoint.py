"""Checkpoint reading: one place detects the format, one small function converts each layout.

Formats (``detect_format``):
  - ``torchscript``: OpenAI's published ``.pt`` archives, read by a restricted unpickler (see torchscript.py);
  - ``pickle``: ``torch.save`` files (``.pt``/``.pth``/``.bin``), loaded with ``weights_only=True`` only. Inside may be a
    plain state dict, a ``{"state_dict": ...}`` wrapper (open_clip training checkpoints), a ``module.`` prefix, or
    our own self-describing ``{"config", "state_dict", "preprocess"}`` checkpoint;
  - ``safetensors``: header-checked before any tensor is read;
  - ``hf``: a Hugging Face folder, or its ``config.json``, or a weights file with ``config.json`` beside: ``CLIPModel``,
    or by its ``model_type`` a ``SiglipModel`` (SigLIP and SigLIP 2 fixed resolution) or an ``XCLIPModel``;
  - ``open_clip``: an open_clip hub folder (``open_clip_config.json`` beside its weights).
Every path ends in ``Checkpoint``: a state dict in our layout (OpenAI's for CLIP, VideoX's for X-CLIP, siglip.py's
for SigLIP) plus the config, whose type names the family, and the preprocessing it implies. A pickle whose state
dict has X-CLIP's ``mit.*`` and ``prompts_*`` entries (VideoX's ``{"model": ...}`` files) is read as X-CLIP; the
layouts of ViFi-CLIP, ActionCLIP (both), Open-VCLIP and FROSTER are recognised by their keys (``adapted``). A
``torch.save`` file that ``weights_only`` refuses only for a config object it carries (ViFi-CLIP's yacs CfgNode)
is read by the restricted unpickler of ``torchscript.read_torch_save``, which refuses anything else.

ViFi-CLIP lacks the token embedding, and Open-VCLIP is evaluated interpolated with the CLIP it was tuned from: that
CLIP (``base``) is the published model of the same architecture, downloaded and SHA256-checked, unless a path is
given (``base=`` or ``$CLIP_VIDEO_BASE_MODEL``).
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from . import adapted
from .config import (
    MODEL_CONFIGS,
    CLIPConfig,
    PreprocessConfig,
    TextConfig,
    VisionConfig,
    check_recorded_protocol,
    config_from_state_dict,
)
from .errors import CheckpointError
from .hf_layout import HF_LAYER
from .siglip import SigLIP, SigLIPConfig
from .siglip import from_hf as siglip_from_hf
from .torchscript import is_torchscript_archive, read_torch_save, read_torchscript_state_dict
from .xclip import XCLIPConfig
from .xclip import from_hf as xclip_from_hf

if TYPE_CHECKING:  # annotations only
    from .model import CLIP
    from .temporal import TemporalTransformer

Format = Literal["torchscript", "pickle", "safetensors", "hf", "open_clip"]
FORMAT_TAG = "clip_video.checkpoint"
MAX_SAFETENSORS_HEADER = 100 << 20
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SIGLIP_TOKENIZERS = (("spiece.model", "siglip"), ("tokenizer.model", "siglip2"))  # T5's vocabulary; Gemma's
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Entries of OpenAI/open_clip/TorchScript state dicts that are bookkeeping, not weights.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]  # our layout for the family
    config: CLIPConfig | SigLIPConfig | XCLIPConfig
    preprocess: PreprocessConfig
    format: str
    # a trained temporal pooler: {"config": TemporalConfig dict, "state_dict": ...}
    temporal: Mapping[str, Any] | None = None
    # SigLIP: (SentencePiece model file, "siglip" | "siglip2") found beside the weights
    tokenizer: tuple[Path | bytes, str] | None = None  # (its file, or its serialized model), variant
    family: str | None = None  # a CLIP fine-tuned for video (vificlip, actionclip, openvclip, froster); None: the
    #                            config's type says it
    # what our checkpoint recorded of its protocol (config.RECORDED_PROTOCOL), the family's defaults otherwise
    protocol: Mapping[str, Any] | None = None


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def detect_format(path: str | Path) -> Format:
    """Name the container format of ``path`` from its file layout and magic bytes (no tensor is read)."""
    path = Path(path)
    if path.is_dir():
        if (path / "open_clip_config.json").is_file() and _first_existing(path, OPEN_CLIP_WEIGHTS):
            return "open_clip"
        if (path / "config.json").is_file() and _first_existing(path, HF_WEIGHTS):
            return "hf"
        raise CheckpointError(
            f"{path}: folder holds no checkpoint: expected config.json with one of {HF_WEIGHTS} (Hugging Face) "
            f"or open_clip_config.json with one of {OPEN_CLIP_WEIGHTS} (open_clip)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.name == "config.json":
        return "hf"
    if path.name in OPEN_CLIP_WEIGHTS and (path.parent / "open_clip_config.json").is_file():
        return "open_clip"
    if path.name in HF_WEIGHTS and (path.parent / "config.json").is_file():
        return "hf"
    return _file_format(path)


def _file_format(path: Path) -> Literal["torchscript", "pickle", "safetensors"]:
    """Container format of one weights file, from its magic bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                return "torchscript" if is_torchscript_archive(zf.namelist()) else "pickle"
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: unreadable zip checkpoint (truncated or corrupt): {e}") from None
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then a JSON header
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol marker of a legacy (non-zip) torch.save file
        return "pickle"
    raise CheckpointError(
        f"{path}: unrecognised checkpoint format (not a zip, pickle or safetensors file; first bytes {head[:8]!r})"
    )


# ---------------------------------------------------------------- raw readers (container -> dict of tensors)


def read_pickle(path: Path) -> Any:
    """torch.load with weights_only=True, never retried without it: a zip it refuses is read by the restricted
    unpickler (``read_torch_save``: tensors, plain data and inert config objects), which refuses anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if zipfile.is_zipfile(path):
            return read_torch_save(path)  # raises CheckpointError naming the refused global
        reason = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: refusing to load: the pickle needs arbitrary code to load ({reason}); nothing in it was run. "
            "Re-save it as a plain state dict or safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable torch checkpoint: {e}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Validate the header (size cap, every tensor inside the file, sizes matching dtypes), then read."""
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise CheckpointError(f"{path}: safetensors header claims {header_len} bytes (file {size}, cap {MAX_SAFETENSORS_HEADER})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    data_size = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        numel = 1
        for s in entry["shape"]:
            numel *= s
        itemsize = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                    "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}.get(entry["dtype"])
        if itemsize is None or not 0 <= begin <= end <= data_size or end - begin != numel * itemsize:
            raise CheckpointError(f"{path}: safetensors entry {name!r} {entry} does not fit the file's {data_size} data bytes")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # the library's own SafetensorError types vary by version
        raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from None


def read_tensors(path: Path) -> Any:
    """Tensors from any single weights file: .safetensors, a TorchScript archive, or a torch pickle."""
    fmt = _file_format(path)
    if fmt == "torchscript":
        return read_torchscript_state_dict(path)
    if fmt == "safetensors":
        return read_safetensors(path)
    return read_pickle(path)


# ---------------------------------------------------------------- layout conversions (each -> OpenAI layout)


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers, without a ``module.`` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (top-level type {type(obj).__name__})")
    sd = dict(obj)
    for k, v in sd.items():  # a view repeating its storage (zero strides) would grow on the first copy
        if v.numel() * v.element_size() > v.untyped_storage().nbytes():
            raise CheckpointError(f"{path}: tensor {k!r} of shape {tuple(v.shape)} has more elements than its storage")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


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
        raise ValueError(f"transformers' CLIPModel has a ViT image tower only; config has ResNet layers "
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


def _preprocess_from_hf(folder: Path, image_size: int) -> PreprocessConfig:
    pp = folder / "preprocessor_config.json"
    if not pp.is_file():
        return PreprocessConfig(image_size=image_size)
    d = _read_json(pp)
    return PreprocessConfig(image_size=image_size, mean=d.get("image_mean", PreprocessConfig.mean),
                            std=d.get("image_std", PreprocessConfig.std))


# ---------------------------------------------------------------- the one entry point


def _hf_preprocess(folder: Path, default: PreprocessConfig) -> PreprocessConfig:
    """The family's ``default`` as SigLIP's and X-CLIP's preprocessor_config.json amends it: mean/std and
    resampling (PIL's 2 bilinear, 3 bicubic)."""
    pp = _read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    return dataclasses.replace(
        default, mean=pp.get("image_mean", default.mean), std=pp.get("image_std", default.std),
        interpolation={2: "bilinear", 3: "bicubic"}.get(pp.get("resample", 0), default.interpolation))


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


# the families our format saves, and the config type each is read back with (X-CLIP's and SigLIP's are their own)
SAVED_FAMILIES = ("clip", "vificlip", "actionclip", "openvclip", "froster", "xclip", "siglip")
VIDEO_CLIP_FAMILIES = ("vificlip", "actionclip", "openvclip", "froster")  # CLIPs whose protocol is their family's


def _saved_config(family: str, d: Mapping[str, Any]) -> CLIPConfig | SigLIPConfig | XCLIPConfig:
    if family == "xclip":
        return XCLIPConfig(**d)
    if family == "siglip":
        return SigLIPConfig(**d)
    return CLIPConfig.from_dict(d)


def save_checkpoint(model: CLIP | SigLIP, path: str | Path, extra: Mapping[str, Any] | None = None, *,
                    temporal: TemporalTransformer | None = None, protocol: Mapping[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint: config, preprocessing and weights, loadable with weights_only=True.

    ``temporal``: a trained ``TemporalTransformer`` stored beside the CLIP weights (``load_temporal`` reads it).
    ``protocol``: how the model is meant to be used (``config.RECORDED_PROTOCOL``: pooling, frames, templates), which
    every job then takes as its default.
    """
    if protocol is not None and (problem := check_recorded_protocol(protocol)):
        raise ValueError(f"{path}: cannot record that protocol: {problem}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "format": FORMAT_TAG,
        "version": 2,
        "family": model.family,  # what the weights are read back as: the model class and its protocol
        "config": getattr(model, "xclip_config", model.config).to_dict(),  # X-CLIP's: its CLIP's and its own
        "preprocess": dataclasses.asdict(model.preprocess_config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:  # SigLIP's SentencePiece model, so the file is whole without its folder
        obj["tokenizer"] = {"variant": tokenizer.variant,
                            "model": torch.frombuffer(bytearray(tokenizer.sp.serialized_model_proto()),
                                                      dtype=torch.uint8)}
    if protocol is not None:
        obj["protocol"] = {k: list(v) if k == "templates" and v is not None else v for k, v in protocol.items()}
    if temporal is not None:
        obj["temporal"] = {"config": temporal.config.to_dict(),
                           "state_dict": {k: v.detach().cpu() for k, v in temporal.state_dict().items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- CLIPs adapted to video (adapted.py)


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

    from .download import model_path

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
