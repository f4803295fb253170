"""Training data: sources of (clip, caption) batches for contrastive training.

A source plans the *global* batch of a step from ``(seed, step)`` alone and materialises only the rows a rank asks
for. So the data of step k is the same whether the run is resumed, split over ranks or accumulated over micro-batches,
and no data-loader state needs saving in a checkpoint.

Every row carries keys (see ``clip_model.loss.positives``): what the clip shows and what its caption states. A caption
that fits several clips of the batch (a repeated caption, or "something moving left") then counts them all as
matches instead of pushing them apart as negatives.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from clip_model.errors import UserError
from datasets.world import CAPTION_FORMS, Clip, WorldConfig, caption, caption_keys, clip_keys, is_held_out, render
from pipeline.video.open import open_video
from pipeline.video.reader import VideoDecodeError
from pipeline.video.samplers import segment_indices


@dataclass(frozen=True)
class Batch:
    frames: torch.Tensor  # uint8 (B, T, H, W, 3)
    captions: list[str]  # (B,)
    clip_keys: torch.Tensor  # (B, K) long: what each clip shows
    caption_keys: torch.Tensor  # (B, K) long: what each caption states (-1: left out)


class ClipSource(Protocol):
    num_frames: int

    def batch(self, step: int, size: int, rows: slice = slice(None)) -> Batch:
        """Rows ``rows`` of the global batch of ``size`` clips for ``step``; a pure function of (seed, step)."""


def _step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def _choose(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` indices into ``n`` items: every item once per full pass, then a random remainder, shuffled."""
    idx = np.concatenate([np.tile(np.arange(n), size // n), rng.choice(n, size % n, replace=False)])
    return rng.permutation(idx)


class RenderedWorld:
    """Fresh clips of the synthetic world's seen (object, action) pairs, rendered for every step; held-out pairs never.

    Fresh renders matter: a fixed pool is memorised clip by clip and generalises worse to held-out pairs (the README's
    training section has the numbers). Each caption leaves out the colour, the shape or both with
    probability ``caption_dropout`` (``datasets.world.CAPTION_FORMS``).
    """

    def __init__(self, cfg: WorldConfig, caption_dropout: float = 0.75, seed: int = 0):
        self.cfg, self.num_frames, self.caption_dropout, self.seed = cfg, cfg.num_frames, caption_dropout, seed
        self.pairs = [(c, s, a) for i, (c, s) in enumerate(cfg.objects) for k, a in enumerate(cfg.actions)
                      if not is_held_out(cfg, i, k)]

    def plan(self, step: int, size: int) -> list[tuple[Clip, str]]:
        """The global batch of ``step``: (clip, caption form) pairs, cheap to compute on every rank."""
        rng = _step_rng(self.seed, step)
        chosen = _choose(rng, len(self.pairs), size)
        seeds = rng.integers(2**31, size=size)
        partial = rng.random(size) < self.caption_dropout
        forms = rng.integers(1, len(CAPTION_FORMS), size=size)
        return [(Clip(*self.pairs[int(p)], seed=int(sd), split="train"), CAPTION_FORMS[int(f)] if d else "full")
                for p, sd, d, f in zip(chosen, seeds, partial, forms)]

    def batch(self, step: int, size: int, rows: slice = slice(None)) -> Batch:
        plan = self.plan(step, size)[rows]
        frames = torch.from_numpy(np.stack([render(c, self.cfg) for c, _ in plan]))
        return Batch(frames, [caption(c, f) for c, f in plan],
                     torch.tensor([clip_keys(self.cfg, c) for c, _ in plan]),
                     torch.tensor([caption_keys(self.cfg, c, f) for c, f in plan]))


class ClipPool:
    """Clips held in memory with free-text captions (e.g. decoded once from a captions CSV). Keys are caption ids,
    so clips that share a caption are each other's positives."""

    def __init__(self, frames: torch.Tensor, captions: list[str], seed: int = 0):
        if len(frames) != len(captions) or not len(captions):
            raise UserError(f"a clip pool needs one caption per clip and at least one clip "
                             f"({len(frames)} clips, {len(captions)} captions)")
        self.frames, self.captions, self.seed = frames, captions, seed
        self.num_frames = frames.shape[1]
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        self.keys = torch.tensor([[ids[c]] for c in captions])

    @classmethod
    def from_csv(cls, captions_csv: str | Path, num_frames: int = 8, seed: int = 0) -> ClipPool:
        """A CSV with ``path`` and ``caption`` columns (paths relative to the CSV's folder); ``num_frames`` frames
        from the middles of equal segments of each video."""
        captions_csv = Path(captions_csv)
        try:
            with open(captions_csv, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise UserError(f"{captions_csv}: cannot read the captions CSV: {e.strerror}") from None
        if not rows or not {"path", "caption"} <= set(rows[0]):
            raise UserError(f"{captions_csv}: a captions CSV needs a header with 'path' and 'caption' and one row "
                             "per clip")
        frames, size = [], None
        for r in rows:
            path = captions_csv.parent / r["path"]
            try:
                with open_video(path) as reader:
                    clip = reader.get_frames(segment_indices(reader.num_frames, num_frames))
            except VideoDecodeError as e:
                raise UserError(f"{captions_csv}: {e}") from None
            if size is not None and clip.shape[1:] != size:
                raise UserError(f"{path}: frames are {clip.shape[1:3]}, other clips {size[:2]}; resize the clips "
                                 "to one size for training")
            size = clip.shape[1:]
            frames.append(clip)
        return cls(torch.stack(frames), [r["caption"] for r in rows], seed)

    def batch(self, step: int, size: int, rows: slice = slice(None)) -> Batch:
        idx = _choose(_step_rng(self.seed, step), len(self.captions), size)[rows]
        return Batch(self.frames[idx], [self.captions[i] for i in idx], self.keys[idx], self.keys[idx])
