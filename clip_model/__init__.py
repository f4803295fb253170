"""CLIP for video: the model, its tokenizer, preprocessing and checkpoint loading.

The public surface mirrors openai/CLIP: ``available_models``, ``load``, ``tokenize``, ``build_model``. It lives in
``api`` and is imported on first use, so that the torch-free parts (``clip_model.geometry``: the resize and crop
arithmetic decode workers share with ``ClipTransform``) import without torch.
"""
# ruff: noqa: F405 - __all__ names the surface that __getattr__ serves from api
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import *  # noqa: F403 - the surface, for type checkers

__all__ = [
    "CLIP", "CLIPConfig", "Checkpoint", "CheckpointError", "ClipLoss", "ClipTransform", "MODEL_CONFIGS",
    "PRECISIONS", "PreprocessConfig", "TextConfig", "VisionConfig", "available_models", "build_model", "cache_dir",
    "config_from_state_dict", "create_model", "detect_format", "load", "load_state_dict_strict", "read_checkpoint",
    "load_temporal", "load_with_temporal", "load_video_model", "VideoModel", "no_pooler_error", "save_checkpoint",
    "tokenize", "VideoCLIP", "SigLIP",
    "SigLIPConfig", "XCLIP", "XCLIPConfig", "FrameTextModel", "OpenVCLIP",
]


def __getattr__(name: str) -> Any:
    """What ``api`` holds (its ``__all__`` and the names it imports, as this module held them before)."""
    if name.startswith("__"):
        raise AttributeError(f"module 'clip_model' has no attribute {name!r}")
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: imported as such, never via api
        return importlib.import_module(f".{name}", __name__)  # (``from . import adapted`` asks here first)
    api = importlib.import_module(".api", __name__)
    if hasattr(api, name):
        return getattr(api, name)
    raise AttributeError(f"module 'clip_model' has no attribute {name!r}")
