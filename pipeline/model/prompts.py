"""Prompt templates and prompt-ensembled class embeddings (normalise each prompt, average per class, renormalise)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import clip_model
from clip_model.errors import UserError
from datasets import DATA_DIR

from .families import template_sets
from .tensor_cache import load_tensor, save_tensor


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """``none`` (bare name), ``video`` (a generic set), ``ucf101`` / ``kinetics700`` (CLIP's published sets), a video
    CLIP's own set (its family's, by name: ``families.template_sets``) or a file with one template per line,
    each containing ``{}``; or the templates themselves (what a checkpoint recorded)."""
    if not isinstance(spec, str):
        return list(spec)
    named = template_sets()  # none, video, and each video CLIP's own (families.FAMILIES)
    if spec in named:
        return list(named[spec].texts)
    if spec in ("ucf101", "kinetics700"):
        return json.loads((DATA_DIR / "prompts" / f"{spec}_clip.json").read_text())["templates"]
    path = Path(spec)
    if not path.exists() or path.is_dir():  # a pipe (--templates <(...)) is read, once, like a file
        names = "|".join([*named, "ucf101", "kinetics700"])
        raise UserError(f"templates {spec!r}: not {names} and no such file")
    templates = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    bad = [t for t in templates if "{}" not in t and "{0}" not in t]
    if not templates or bad:
        raise UserError(f"{path}: every template line must contain '{{}}' (or '{{0}}'); offending: "
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
