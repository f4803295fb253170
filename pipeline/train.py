"""Contrastive video-text training (CLIP's symmetric InfoNCE with its learned temperature), on caption CSVs.

Status: the core loop only (issue 5 is open). Clips are decoded once into memory (the synthetic world is small);
each step draws a batch of clips with distinct captions (duplicates would be false negatives), embeds their frames,
pools them over time (mean, or the learned temporal transformer) and matches them to the caption embeddings.
``train_factored`` also matches action-only and object-only captions in groups where those are unique. Neither
yet generalises to held-out (object, action) pairs (about 21-29 % held-out top-1 after 600 steps, chance 10 %);
checkpoints, resume, DDP, freezing and the CLI come with the rest of issue 5.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import clip_model
from clip_model.temporal import TemporalConfig, TemporalTransformer

from .decode import open_video


@dataclass(frozen=True)
class TrainSettings:
    arch: str = "tiny-vit"
    pooling: str = "temporal"  # mean | temporal
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    seed: int = 0
    temporal_layers: int = 2
    factored: bool = True  # also match action-only and object-only captions, in groups where both are unique


def load_clips(root: Path, captions_csv: Path) -> tuple[torch.Tensor, list[dict]]:
    """uint8 (N, T, H, W, 3) frames of every clip in a captions CSV, and its rows."""
    with open(captions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    frames = []
    for r in rows:
        with open_video(root / r["path"], "pyav") as reader:
            frames.append(reader.get_frames(np.arange(reader.num_frames)))
    return torch.stack(frames), rows


class VideoCLIP(torch.nn.Module):
    """A CLIP plus a temporal pooler: frames (B, T, 3, S, S) -> video embeddings (B, E)."""

    def __init__(self, clip: clip_model.CLIP, pooling: str, num_frames: int, temporal_layers: int = 2):
        super().__init__()
        self.clip, self.pooling = clip, pooling
        width = clip.config.embed_dim
        self.temporal = TemporalTransformer(TemporalConfig(width, num_frames, temporal_layers, max(1, width // 32))) \
            if pooling == "temporal" else None

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        return self.clip.encode_image(frames.flatten(0, 1)).view(B, T, -1)  # (B, T, E)

    def pool(self, frame_features: torch.Tensor) -> torch.Tensor:
        return self.temporal(frame_features) if self.temporal is not None else frame_features.mean(dim=1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self.pool(self.frame_features(frames))


def _lr(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _factored_batch(rows: list[dict], rng: np.random.Generator, batch_size: int) -> list[list[int]]:
    """Groups of clips in which every action and every object occurs at most once, so the partial captions
    ("moving left", "a red square") have no duplicates, hence no false negatives, inside a group."""
    groups, used = [], 0
    order = rng.permutation(len(rows))
    while used < batch_size:
        group, actions, objects = [], set(), set()
        for i in order:
            r = rows[int(i)]
            obj = (r["colour"], r["shape"])
            if r["action"] not in actions and obj not in objects:
                group.append(int(i))
                actions.add(r["action"])
                objects.add(obj)
        order = rng.permutation(len(rows))
        groups.append(group)
        used += len(group)
    return groups


def train_factored(frames: torch.Tensor, rows: list[dict], s: TrainSettings) -> tuple[VideoCLIP, list[dict]]:
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    clip = clip_model.create_model(s.arch, seed=s.seed).train()
    model = VideoCLIP(clip, s.pooling, frames.shape[1], s.temporal_layers).train()
    transform = clip_model.ClipTransform(clip.preprocess_config)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=s.weight_decay)
    loss_fn = clip_model.ClipLoss()
    texts = sorted({r["caption"] for r in rows} | {r["action"] for r in rows}
                   | {f"a {r['colour']} {r['shape']}" for r in rows})
    token_of = dict(zip(texts, clip_model.tokenize(texts)))
    history, start = [], time.time()
    for step in range(s.steps):
        groups = _factored_batch(rows, rng, s.batch_size)
        idx = [i for g in groups for i in g]
        clips = frames[idx]
        B, T = clips.shape[:2]
        x = transform.video(clips.flatten(0, 1))
        video = model.encode_video(x.view(B, T, *x.shape[1:]))  # (B, E)
        for g in opt.param_groups:
            g["lr"] = _lr(step, s)
        loss, pos = 0.0, 0
        for g in groups:
            v = video[pos : pos + len(g)]
            pos += len(g)
            for kind in ("caption", "action", "object"):
                words = [rows[i]["caption"] if kind == "caption" else rows[i]["action"] if kind == "action"
                         else f"a {rows[i]['colour']} {rows[i]['shape']}" for i in g]
                loss = loss + loss_fn(v, clip.encode_text(torch.stack([token_of[w] for w in words])), clip.logit_scale)
        loss = loss / (3 * len(groups))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "lr": _lr(step, s), "seconds": time.time() - start})
    return model.eval(), history


def train(frames: torch.Tensor, captions: list[str], s: TrainSettings, log: Path | None = None) -> tuple[VideoCLIP, list[dict]]:
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    clip = clip_model.create_model(s.arch, seed=s.seed).train()
    model = VideoCLIP(clip, s.pooling, frames.shape[1], s.temporal_layers).train()
    transform = clip_model.ClipTransform(clip.preprocess_config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=s.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = clip_model.ClipLoss()
    by_caption: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        by_caption.setdefault(c, []).append(i)
    unique = list(by_caption)
    tokens = {c: t for c, t in zip(unique, clip_model.tokenize(unique))}
    history = []
    start = time.time()
    for step in range(s.steps):
        chosen = rng.choice(len(unique), size=min(s.batch_size, len(unique)), replace=False)
        idx = [int(rng.choice(by_caption[unique[c]])) for c in chosen]
        clips = frames[idx]  # (B, T, H, W, 3)
        B, T = clips.shape[:2]
        x = transform.video(clips.flatten(0, 1)).view(B, T, 3, *transform.video(clips[0, :1]).shape[-2:])
        for g in opt.param_groups:
            g["lr"] = _lr(step, s)
        video = model.encode_video(x)
        text = clip.encode_text(torch.stack([tokens[unique[c]] for c in chosen]))
        loss = loss_fn(video, text, clip.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "lr": _lr(step, s), "seconds": time.time() - start})
    if log is not None:
        log.write_text("\n".join(json.dumps(h) for h in history) + "\n")
    return model.eval(), history


@torch.no_grad()
def evaluate_actions(model: VideoCLIP, frames: torch.Tensor, rows: list[dict], actions: list[str],
                     objects: list[tuple[str, str]]) -> dict:
    """Zero-shot action accuracy: score every 'a {colour} {shape} {action}' caption, sum over objects per action
    (the object is not given), take the best action."""
    clip = model.clip
    transform = clip_model.ClipTransform(clip.preprocess_config)
    prompts = [f"a {c} {s} {a}" for a in actions for c, s in objects] if objects else list(actions)  # action-major
    objects = objects or [None]
    text = F.normalize(clip.encode_text(clip_model.tokenize(prompts)), dim=-1)  # (A·O, E)
    scale = clip.logit_scale.exp().clamp(max=100)
    correct, preds = 0, []
    for k in range(0, len(frames), 64):
        clips = frames[k : k + 64]
        B, T = clips.shape[:2]
        x = transform.video(clips.flatten(0, 1))
        x = x.view(B, T, *x.shape[1:])
        video = F.normalize(model.encode_video(x), dim=-1)
        probs = (scale * video @ text.t()).softmax(-1).view(B, len(actions), len(objects)).sum(-1)  # (B, A)
        preds += probs.argmax(-1).tolist()
    labels = [actions.index(r["action"]) for r in rows]
    correct = sum(int(p == y) for p, y in zip(preds, labels))
    return {"top1": correct / len(rows), "predictions": preds, "labels": labels}
