"""The original CLIP a video CLIP was tuned from: ViFi-CLIP's checkpoints lack its token embedding, and Open-VCLIP's
test interpolates with it. By default the published model of the same architecture (downloaded once,
SHA256-checked); ``base=`` or ``$CLIP_VIDEO_BASE_MODEL`` names another."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import MODEL_CONFIGS, CLIPConfig
from ..errors import CheckpointError
from .containers import PLAIN_FAMILY, Checkpoint


def published_name(config: CLIPConfig) -> str | None:
    """The OpenAI architecture name ``config`` is, or None."""
    return next((name for name, c in MODEL_CONFIGS.items() if c == config), None)


def base_state_dict(config: CLIPConfig, base: str | Path | None, path: Path, why: str,
                    read: Callable[[Path], Checkpoint]) -> dict[str, torch.Tensor]:
    """The original CLIP of ``config``'s architecture, read by ``read``: ``base`` (or $CLIP_VIDEO_BASE_MODEL) if
    given, else the published model of that architecture, downloaded once and SHA256-checked."""
    from ..download import model_path

    base = base or os.environ.get("CLIP_VIDEO_BASE_MODEL") or None
    if base is None:
        name = published_name(config)
        if name is None:
            raise CheckpointError(f"{path}: {why}, and its architecture is no published CLIP: pass the original "
                                  "CLIP's checkpoint as base= (or $CLIP_VIDEO_BASE_MODEL)")
        try:
            base = model_path(name)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {why}: it needs OpenAI's {name} ({e})") from None
    original = read(Path(base))
    if not isinstance(original.config, CLIPConfig) or original.family != PLAIN_FAMILY or original.architecture != "CLIP":
        raise CheckpointError(f"{base}: the base of {path} must be a plain CLIP checkpoint")
    if original.config.text.width != config.text.width or original.config.vision != config.vision:
        raise CheckpointError(f"{base}: its architecture does not match {path}'s (the CLIP it was tuned from?)")
    return original.state_dict
