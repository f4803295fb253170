"""The classify job: videos in, one top-k prediction (or one recorded error) per video out."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .classify import Prediction, top_k, zero_shot_probs
from .decode import VideoDecodeError, open_video
from .encode import encode_frames
from .models import load_model, resolve_device
from .pool import mean_pool
from .prompts import class_embeddings, load_templates
from .sample import segment_indices


@dataclass(frozen=True)
class ClassifySettings:
    model: str
    classnames: tuple[str, ...]
    templates: str = "video"
    num_frames: int = 8
    topk: int = 5
    device: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("num_frames", "topk", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if not self.classnames:
            raise ValueError("classnames must not be empty")


@dataclass(frozen=True)
class VideoResult:
    path: Path
    prediction: Prediction | None
    error: str | None = None


def classify_videos(settings: ClassifySettings, paths: Sequence[str | Path]) -> list[VideoResult]:
    """Zero-shot classify each video: N segment-middle frames, mean-pooled, against prompt-ensembled labels."""
    device = resolve_device(settings.device)
    model, transform = load_model(settings.model, device)
    classnames = list(settings.classnames)
    text = class_embeddings(model, classnames, load_templates(settings.templates))  # (C, E)
    scale = float(model.logit_scale.exp().clamp(max=100))
    results = []
    for path in paths:
        try:
            reader = open_video(path)
            frames = reader.get_frames(segment_indices(reader.info.num_frames, settings.num_frames))
        except VideoDecodeError as e:
            results.append(VideoResult(Path(path), None, str(e)))
            continue
        with torch.no_grad():
            video = mean_pool(encode_frames(model, transform, frames, settings.batch_size)).to(text.device)  # (E,)
        (pred,) = top_k(zero_shot_probs(video[None], text, scale), classnames, settings.topk)
        results.append(VideoResult(Path(path), pred))
    return results
