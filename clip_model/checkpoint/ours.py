"""The project's own checkpoint format: self-describing (family, config, preprocessing, weights; a temporal
pooler, SigLIP's tokenizer and the recorded protocol where there are), loadable with ``weights_only=True``."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import CLIPConfig, PreprocessConfig, check_recorded_protocol
from ..errors import CheckpointError, UserError
from ..siglip import SigLIP

if TYPE_CHECKING:  # annotations only
    from ..model import CLIP
    from ..temporal import TemporalTransformer
from .containers import (
    CONFIG_TYPES,
    FORMAT_TAG,
    PLAIN_FAMILY,
    Architecture,
    Checkpoint,
    Source,
    unwrap_state_dict,
)

VERSION = 3  # 1: plain CLIP; 2: + family; 3: + architecture (the model class)
# version 2 files stored the family alone; the class each family's weights ran in then
V2_ARCHITECTURES: dict[str, Architecture] = {"openvclip": "OpenVCLIP", "froster": "OpenVCLIP", "xclip": "XCLIP",
                                             "siglip": "SigLIP"}


def is_ours(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT_TAG


def read_ours(source: Source) -> Checkpoint:
    """Our self-describing file: family, architecture, config, preprocessing, weights; a temporal pooler, SigLIP's
    tokenizer and the recorded protocol where there are. Each entry is checked before it is used."""
    obj, path = source.contents, source.path
    family = obj.get("family", PLAIN_FAMILY)  # version 1 files were all plain CLIPs
    architecture = obj.get("architecture") or V2_ARCHITECTURES.get(family, "CLIP")
    if not isinstance(family, str) or architecture not in CONFIG_TYPES:
        raise CheckpointError(f"{path}: clip_video checkpoint of family {family!r} and architecture "
                              f"{architecture!r}; known architectures: {', '.join(CONFIG_TYPES)}")
    try:
        config_type = CONFIG_TYPES[architecture]
        config = CLIPConfig.from_dict(obj["config"]) if config_type is CLIPConfig else config_type(**obj["config"])
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
    if tokenizer is not None and not (isinstance(tokenizer, Mapping)
                                      and isinstance(tokenizer.get("model"), torch.Tensor)):
        raise CheckpointError(f"{path}: corrupt clip_video checkpoint: 'tokenizer' needs its model bytes")
    return Checkpoint(unwrap_state_dict(obj, path), config, preprocess, source.format, "", family=family,
                      architecture=architecture, temporal=temporal, protocol=protocol,
                      tokenizer=(tokenizer["model"].numpy().tobytes(), tokenizer["variant"]) if tokenizer else None)


def save_checkpoint(model: CLIP | SigLIP, path: str | Path, extra: Mapping[str, Any] | None = None, *,
                    temporal: TemporalTransformer | None = None, protocol: Mapping[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint: config, preprocessing and weights, loadable with weights_only=True.

    ``temporal``: a trained ``TemporalTransformer`` stored beside the CLIP weights (``load_temporal`` reads it).
    ``protocol``: how the model is meant to be used (``config.RECORDED_PROTOCOL``: pooling, frames, templates), which
    every job then takes as its default.
    """
    if protocol is not None and (problem := check_recorded_protocol(protocol)):
        raise UserError(f"{path}: cannot record that protocol: {problem}")
    architecture = type(model).__name__
    if architecture not in CONFIG_TYPES:
        raise UserError(f"{path}: cannot save a {architecture}; our format holds {', '.join(CONFIG_TYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "format": FORMAT_TAG,
        "version": VERSION,
        "family": model.family,  # whose protocol the weights follow
        "architecture": architecture,  # the model class that runs them
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
