"""Model specs accepted on the command line: a published name, a checkpoint path, or ``random:<arch>``."""
from __future__ import annotations

import torch

import clip_model

RANDOM_PREFIX = "random:"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec not in ("cpu", "cuda") and not spec.startswith("cuda:"):
        raise ValueError(f"--device {spec!r}: choose auto, cpu or cuda")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine")
    return torch.device(spec)


def load_model(spec: str, device: torch.device) -> tuple[clip_model.CLIP, clip_model.ClipTransform]:
    """``random:tiny-vit`` builds an untrained model (seed 0) for smoke tests; anything else goes to clip_model.load."""
    if spec.startswith(RANDOM_PREFIX):
        model = clip_model.create_model(spec[len(RANDOM_PREFIX):], seed=0).to(device)
        return model, clip_model.ClipTransform(model.preprocess_config)
    return clip_model.load(spec, device=device)
