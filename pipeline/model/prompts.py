"""Prompt templates and prompt-ensembled class embeddings (normalise each prompt, average per class, renormalise)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import clip_model
from datasets import DATA_DIR

from .tensor_cache import load_tensor, save_tensor

VIDEO_TEMPLATES = (
    "a video of a person {}.",
    "a video of someone {}.",
    "a clip of a person {}.",
    "a photo of a person {}.",
    "a person {}.",
    "{}",
)


# The prompts each video CLIP's own evaluation code uses (family protocols in clip_model.config.FAMILY_PROTOCOLS)
_ACTIONS = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
            "a person performing {}.", "a person practicing {}.")
OPENVCLIP_TEMPLATES = tuple(f"{prefix} {a}" for prefix in ("a photo of", "a video of", "a example of",  # sic
                                                            "a demonstration of") for a in _ACTIONS)
FAMILY_TEMPLATES = {
    "vificlip": ("a photo of a {}.",),  # ViFi-CLIP trainers/vificlip.py: ctx_init "a photo of a" + name + "."
    # ActionCLIP utils/Text_Prompt.py text_aug, in its order
    "actionclip": ("a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
                   "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
                   "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
                   "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
                   "The man is {}", "The woman is {}"),
    "openvclip": OPENVCLIP_TEMPLATES,  # Open-VCLIP temporalclip_video_model.py: 4 prefixes x 7 patterns
    # FROSTER temporalclip_video_model.py: each of Open-VCLIP's 28 formatted with the name, then " " and the full
    # "Name: description" string; then that string alone. Its LLM-written descriptions are per dataset and not
    # shipped, so the full string is the name: "a photo of {0}. {0}"
    "froster": (*(t.replace("{}", "{0}") + " {0}" for t in OPENVCLIP_TEMPLATES), "{}"),
}


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """``none`` (bare name), ``video`` (a generic set), ``ucf101`` / ``kinetics700`` (CLIP's published sets), a video
    CLIP's own set (``vificlip``, ``actionclip``, ``openvclip``, ``froster``) or a file with one template per line,
    each containing ``{}``; or the templates themselves (what a checkpoint recorded)."""
    if not isinstance(spec, str):
        return list(spec)
    if spec == "none":
        return ["{}"]
    if spec == "video":
        return list(VIDEO_TEMPLATES)
    if spec in FAMILY_TEMPLATES:
        return list(FAMILY_TEMPLATES[spec])
    if spec in ("ucf101", "kinetics700"):
        return json.loads((DATA_DIR / "prompts" / f"{spec}_clip.json").read_text())["templates"]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"templates {spec!r}: not none|video|ucf101|kinetics700|{'|'.join(FAMILY_TEMPLATES)} and no "
                         "such file")
    templates = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    bad = [t for t in templates if "{}" not in t and "{0}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: every template line must contain '{{}}' (or '{{0}}'); offending: "
                         f"{bad[:3] or 'file is empty'}")
    return templates


@torch.no_grad()
def class_embeddings(model: clip_model.FrameTextModel, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
    """(C, E) unit vectors: each class's prompts encoded, normalised, averaged and renormalised. ``normalize``
    False: the plain mean of each class's raw prompt embeddings (what X-CLIP's prompt generator takes)."""
    device = next(model.parameters()).device
    prompts = [t.format(c) for c in classnames for t in templates]  # class-major: (C·K,)
    feats = []
    for start in range(0, len(prompts), batch_size):
        tokens = model.tokenize(prompts[start : start + batch_size]).to(device)  # the model's own tokenizer
        feats.append(model.encode_text(tokens).float())
    per_prompt = torch.cat(feats).view(len(classnames), len(templates), -1)  # (C, K, E)
    if not normalize:
        return per_prompt.mean(dim=1)
    return F.normalize(F.normalize(per_prompt, dim=-1).mean(dim=1), dim=-1)


@torch.no_grad()
def template_embeddings(model: clip_model.FrameTextModel, classnames: Sequence[str], templates: Sequence[str],
                        batch_size: int = 256) -> torch.Tensor:
    """(K, C, E) unit vectors: each template's prompt of each class, for scorers that average over templates the
    probabilities rather than the embeddings (ActionCLIP)."""
    device = next(model.parameters()).device
    prompts = [t.format(c) for t in templates for c in classnames]  # template-major: (K·C,)
    feats = [model.encode_text(model.tokenize(prompts[i : i + batch_size]).to(device)).float()
             for i in range(0, len(prompts), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1).view(len(templates), len(classnames), -1)


def text_cache_key(model_key: str, classnames: Sequence[str], templates: Sequence[str], normalize: bool = True) -> str:
    """A stable key for one (model, labels, templates, normalisation) combination."""
    payload = json.dumps({"model": model_key, "classes": list(classnames), "templates": list(templates)}
                         | ({} if normalize else {"normalize": False}))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_class_embeddings(model: clip_model.FrameTextModel, model_key: str, classnames: Sequence[str],
                            templates: Sequence[str], cache_dir: Path | None, batch_size: int = 256,
                            normalize: bool = True) -> torch.Tensor:
    """``class_embeddings`` cached on disk under ``cache_dir``, keyed by model, labels and templates.

    ``model_key`` must change whenever the weights do (see ``pipeline.model.loading.model_key``). A Kinetics-700 ensemble is
    19,600 prompts: worth computing once.
    """
    if cache_dir is None:
        return class_embeddings(model, classnames, templates, batch_size, normalize)
    path = cache_dir / f"text_{text_cache_key(model_key, classnames, templates, normalize)}.pt"
    cached = load_tensor(path)
    if cached is not None and cached.shape[0] == len(classnames):
        return cached.to(next(model.parameters()).device)
    features = class_embeddings(model, classnames, templates, batch_size, normalize)
    save_tensor(path, features)
    return features
