"""Checkpoint containers: the format of a path (``detect_format``), the raw readers (pickle with
``weights_only``, header-checked safetensors), and the ``Checkpoint`` every layout ends in."""
from __future__ import annotations

import functools
import json
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import (
    CLIPConfig,
    PreprocessConfig,
)
from ..errors import CheckpointError
from ..siglip import SigLIPConfig
from ..xclip import XCLIPConfig
from .torchscript import is_torchscript_archive, read_torch_save, read_torchscript_state_dict

Format = Literal["torchscript", "pickle", "safetensors", "hf", "open_clip"]
FORMAT_TAG = "clip_video.checkpoint"
MAX_SAFETENSORS_HEADER = 100 << 20
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SIGLIP_TOKENIZERS = (("spiece.model", "siglip"), ("tokenizer.model", "siglip2"))  # T5's vocabulary; Gemma's
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Entries of OpenAI/open_clip/TorchScript state dicts that are bookkeeping, not weights.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


PLAIN_FAMILY = "clip"  # the family of weights nothing else is said of: CLIP's own protocol
# the model class that runs a checkpoint's weights (api.ARCHITECTURES); our format records it beside the family
Architecture = Literal["CLIP", "OpenVCLIP", "XCLIP", "SigLIP"]
CONFIG_TYPES: dict[Architecture, type[CLIPConfig] | type[SigLIPConfig] | type[XCLIPConfig]] = {
    "CLIP": CLIPConfig, "OpenVCLIP": CLIPConfig, "XCLIP": XCLIPConfig, "SigLIP": SigLIPConfig}


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds, read into our layout: the weights, the architecture and config to build, the
    preprocessing they imply, and the family whose protocol the pipeline applies (``pipeline.model.families``)."""

    state_dict: dict[str, torch.Tensor]  # our layout for the architecture
    config: CLIPConfig | SigLIPConfig | XCLIPConfig
    preprocess: PreprocessConfig
    format: Format  # the container (detect_format)
    layout: str  # what the container held (layouts.LAYOUTS, or a folder's model type)
    family: str = PLAIN_FAMILY
    architecture: Architecture = "CLIP"
    # a trained temporal pooler: {"config": TemporalConfig dict, "state_dict": ...}
    temporal: Mapping[str, Any] | None = None
    # SigLIP: (SentencePiece model file, "siglip" | "siglip2") found beside the weights
    tokenizer: tuple[Path | bytes, str] | None = None  # (its file, or its serialized model), variant
    # what our checkpoint recorded of its protocol (config.RECORDED_PROTOCOL), the family's defaults otherwise
    protocol: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        assert isinstance(self.config, CONFIG_TYPES[self.architecture]), (self.architecture, type(self.config))


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


@dataclass
class Source:
    """One checkpoint path as the layouts see it: its container format, and what it holds, read once on first use
    (``contents``: a weights file's object; ``hf_config``: a transformers folder's config.json). ``base``, ``ratio``
    and ``quick_gelu`` are the caller's (see ``read_checkpoint``); ``read`` reads another checkpoint (a base
    CLIP)."""

    path: Path
    format: Format
    read: Callable[[Path], Checkpoint]
    quick_gelu: bool | None = None
    base: str | Path | None = None
    ratio: float | None = None

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    @functools.cached_property
    def contents(self) -> Any:
        """A weights file's object (any wrapper), for the file formats."""
        return read_tensors(self.path)

    @functools.cached_property
    def hf_config(self) -> dict:
        """A transformers folder's config.json (``{}`` for other formats)."""
        if self.format != "hf":
            return {}
        path = self.folder / "config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable JSON: {e}") from None

    @functools.cached_property
    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The file's plain state dict (any wrapper unwrapped), or None where it holds none: unwrapped once, however
        many layouts test its keys."""
        try:
            return unwrap_state_dict(self.contents, self.path)
        except CheckpointError:
            return None
