"""The project's own checkpoint format: self-describing (family, config, preprocessing, weights; a temporal
pooler, SigLIP's tokenizer and the recorded protocol where there are), loadable with ``weights_only=True``."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import (
    CLIPConfig,
    check_recorded_protocol,
)
from ..siglip import SigLIP, SigLIPConfig
from ..xclip import XCLIPConfig

if TYPE_CHECKING:  # annotations only
    from ..model import CLIP
    from ..temporal import TemporalTransformer
from .containers import FORMAT_TAG

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
