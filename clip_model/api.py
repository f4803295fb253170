# ruff: noqa: F401 - it re-exports the surface clip_model.__all__ names
"""The package's public surface (re-exported by ``clip_model``, which imports this on first use)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .adapted import ADAPTED_MODELS, OpenVCLIP, adapted_path
from .checkpoint import Checkpoint, detect_format, read_checkpoint, save_checkpoint
from .config import MODEL_CONFIGS, CLIPConfig, PreprocessConfig, TextConfig, VisionConfig, config_from_state_dict
from .download import cache_dir, model_path, published_models
from .errors import CheckpointError, UserError
from .hub import HUB_MODELS, hub_folder
from .loss import ClipLoss
from .model import CLIP, build_model, load_state_dict_strict
from .names import resolve_name, weights_path
from .siglip import SigLIP, SigLIPConfig
from .sp_tokenizer import SentencePieceTokenizer
from .temporal import TemporalConfig, TemporalTransformer, VideoCLIP
from .tokenizer import tokenize
from .transform import ClipTransform
from .xclip import XCLIP, XCLIPConfig

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FrameTextModel = CLIP | SigLIP  # models that embed single frames and texts (X-CLIP embeds whole clips)


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def available_models() -> list[str]:
    """Names ``load`` resolves by downloading the published OpenAI weights."""
    return list(published_models())


def create_model(name: str, *, seed: int | None = None) -> CLIP:
    """A randomly initialised CLIP of a named architecture (``MODEL_CONFIGS``), e.g. ``tiny-vit`` for tests."""
    if name not in MODEL_CONFIGS:
        raise UserError(f"unknown architecture {name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return CLIP(MODEL_CONFIGS[name]).eval()


def model_from_checkpoint(ckpt: Checkpoint, source: str) -> CLIP | SigLIP:
    """The checkpoint's model: its architecture's class (``Checkpoint.architecture``; the config's type says all
    but Open-VCLIP's), built from its config, marked with its family."""
    model: CLIP | SigLIP
    config = ckpt.config
    if isinstance(config, SigLIPConfig):
        tokenizer = None
        if ckpt.tokenizer is not None:
            tokenizer = SentencePieceTokenizer(ckpt.tokenizer[0], ckpt.tokenizer[1], config.context_length)
        model = SigLIP(config, ckpt.preprocess, tokenizer, family=ckpt.family)
    elif isinstance(config, XCLIPConfig):
        model = XCLIP(config, ckpt.preprocess, family=ckpt.family)
    else:
        clip_class = OpenVCLIP if ckpt.architecture == "OpenVCLIP" else CLIP  # the rest checked by Checkpoint
        model = clip_class(config, ckpt.preprocess, family=ckpt.family)
    load_state_dict_strict(model, ckpt.state_dict, source=source)
    return model.eval()


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    download_root: str | Path | None = None,
    quick_gelu: bool | None = None,
    precision: str = "fp32",
    base: str | Path | None = None,
    ratio: float | None = None,
) -> tuple[CLIP | SigLIP, ClipTransform]:
    """Load a published model by name (downloaded and SHA256-checked once) or any supported checkpoint path.

    Returns the model in eval mode on ``device`` and its image transform: a ``CLIP``, an ``XCLIP`` (a CLIP whose
    ``encode_video`` takes whole clips) or a ``SigLIP``, as the checkpoint says. ``precision`` is ``fp32`` (default),
    ``bf16`` (weights in bfloat16; features stay within cosine 0.999 of fp32) or ``fp16`` (GPU only).
    """
    name = resolve_name(name_or_path)
    if name.kind == "random":
        untrained = create_model(name.architecture, seed=0).to(device=device, dtype=_dtype(precision))
        return untrained, ClipTransform(untrained.preprocess_config)
    path = _resolve(name_or_path, download_root, precision)
    model = model_from_checkpoint(read_checkpoint(path, quick_gelu=quick_gelu, base=base, ratio=ratio),
                                  source=str(path))
    return model.to(device=device, dtype=PRECISIONS[precision]), ClipTransform(model.preprocess_config)


class VideoModel(NamedTuple):
    model: CLIP | SigLIP
    transform: ClipTransform
    head: TemporalTransformer | None  # the temporal pooler the checkpoint carries, or None
    protocol: Mapping[str, Any] | None  # what the checkpoint recorded of its protocol (config.RECORDED_PROTOCOL)


def load_video_model(name_or_path: str | Path, device: str | torch.device = "cpu", *, precision: str = "fp32",
                     base: str | Path | None = None, ratio: float | None = None) -> VideoModel:
    """``load`` plus what the checkpoint carries for video, from one read of the file: its temporal pooler (one
    written by train, ActionCLIP's fusion transformer) and the protocol it recorded (train's checkpoints do)."""
    name = resolve_name(name_or_path)
    if name.kind == "random":
        untrained = create_model(name.architecture, seed=0).to(device=device, dtype=_dtype(precision))
        return VideoModel(untrained, ClipTransform(untrained.preprocess_config), None, None)
    path = _resolve(name_or_path, None, precision)
    ckpt = read_checkpoint(path, base=base, ratio=ratio)
    model = model_from_checkpoint(ckpt, source=str(path)).to(device=device, dtype=PRECISIONS[precision])
    head = temporal_from_checkpoint(ckpt, path).to(device) if ckpt.temporal is not None else None
    return VideoModel(model, ClipTransform(model.preprocess_config), head, ckpt.protocol)


def load_with_temporal(path: str | Path, device: str | torch.device = "cpu", *, precision: str = "fp32",
                       ) -> tuple[CLIP, ClipTransform, TemporalTransformer]:
    """``load`` plus the trained temporal pooler of the same clip_video checkpoint, from one read of the file."""
    model, transform, head, _ = load_video_model(path, device, precision=precision)
    if head is None:
        raise no_pooler_error(Path(path))
    if type(model) is not CLIP:
        raise CheckpointError(f"{path}: a {type(model).__name__} checkpoint; a temporal pooler pools the frame "
                              "embeddings of a CLIP (train writes them; ActionCLIP's fusion transformer is one)")
    return model, transform, head


def load_temporal(path: str | Path, device: str | torch.device = "cpu") -> TemporalTransformer:
    """The trained temporal pooler stored in a clip_video checkpoint (see ``save_checkpoint(..., temporal=)``)."""
    path = Path(path).expanduser()
    return temporal_from_checkpoint(read_checkpoint(path), path).to(device)


def no_pooler_error(path: str | Path) -> CheckpointError:
    """The error of asking for temporal pooling on a checkpoint without a temporal pooler."""
    return CheckpointError(f"{path}: this checkpoint has no trained temporal pooler; pool with mean instead, or "
                           "train one with pooling: temporal")


def temporal_from_checkpoint(ckpt: Checkpoint, path: Path) -> TemporalTransformer:
    if ckpt.temporal is None:
        raise no_pooler_error(path)
    try:
        head = TemporalTransformer(TemporalConfig(**ckpt.temporal["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt temporal pooler config: {e}") from None
    load_state_dict_strict(head, ckpt.temporal["state_dict"], source=f"{path} (temporal pooler)")
    return head.eval()


def _resolve(name_or_path: str | Path, download_root: str | Path | None, precision: str) -> Path:
    """A model name (``names.resolve_name``) -> the file or folder of its weights."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return weights_path(resolve_name(name_or_path), download_root)
