"""The classify job: videos in, one top-k prediction (or one recorded error) per video out."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .classify import Prediction, top_k, zero_shot_probs
from .decode import Backend, DecodeRequest
from .encode import encode_frames
from .models import load_model, resolve_device
from .pool import mean_pool
from .prompts import class_embeddings, load_templates
from .sample import Sampling
from .workers import decode_in_workers


@dataclass(frozen=True)
class ClassifySettings:
    model: str
    classnames: tuple[str, ...]
    templates: str = "video"
    num_frames: int = 8
    topk: int = 5
    device: str = "auto"
    batch_size: int = 32
    backend: Backend = "auto"
    decode_workers: int = 2
    decode_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("num_frames", "topk", "batch_size", "decode_workers", "decode_timeout_s"):
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
    # frames larger than twice the model's input are scaled down in the decoder; the model's transform does the rest
    cap = 2 * model.preprocess_config.image_size
    requests = [DecodeRequest(str(p), Sampling("segments", num_frames=settings.num_frames), settings.backend, cap)
                for p in paths]
    results: dict[str, VideoResult] = {}
    for request, outcome in decode_in_workers(requests, num_workers=min(settings.decode_workers, len(requests)),
                                              timeout_s=settings.decode_timeout_s):
        if outcome.status != "ok":
            results[request.path] = VideoResult(Path(request.path), None, f"{request.path}: {outcome.status}: "
                                                                          f"{outcome.error}")
            continue
        with torch.no_grad():
            frame_features = encode_frames(model, transform, outcome.result.frames, settings.batch_size)  # (T, E)
            video = mean_pool(frame_features).to(text.device)  # (E,)
        (pred,) = top_k(zero_shot_probs(video[None], text, scale), classnames, settings.topk)
        results[request.path] = VideoResult(Path(request.path), pred)
    return [results[str(p)] for p in paths]
