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

from .containers import (
           FORMAT_TAG,
           Architecture,
           Checkpoint,
           Format,
           detect_format,
           read_pickle,
           read_safetensors,
           unwrap_state_dict,
)
from .conversions import convert_hf, convert_open_clip, convert_openai
from .layouts import LAYOUTS, Layout, read_checkpoint
from .ours import save_checkpoint

__all__ = ["FORMAT_TAG", "Architecture", "Checkpoint", "Format", "convert_hf", "convert_open_clip", "convert_openai",
           "LAYOUTS", "Layout", "detect_format", "read_checkpoint", "read_pickle", "read_safetensors", "save_checkpoint",
           "unwrap_state_dict"]
