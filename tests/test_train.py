"""The contrastive training core: short runs lower the loss and beat chance; sources never leak held-out pairs."""
from __future__ import annotations

import numpy as np
import torch

from datasets.world import WorldConfig, plan_world, render
from pipeline.train import ClipPool, RenderedWorld, TrainSettings, evaluate_actions, train

CFG = WorldConfig(seed=0, clips_per_pair=3, colours=("red", "blue"), shapes=("square", "circle"),
                  actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5)


def _clips(split: str):
    clips = [c for c in plan_world(CFG) if c.split == split]
    frames = torch.from_numpy(np.stack([render(c, CFG) for c in clips]))
    return clips, frames


def test_short_run_on_a_clip_pool_lowers_the_loss_and_beats_chance():
    clips, frames = _clips("train")
    model, history = train(ClipPool(frames, [c.caption for c in clips]),
                           TrainSettings(steps=60, batch_size=16, warmup_steps=5, lr=3e-3))
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    labels = [CFG.actions.index(c.action) for c in clips]
    acc = evaluate_actions(model, frames, list(CFG.actions), labels, CFG.objects)["top1"]
    assert acc > 1 / len(CFG.actions) + 0.15, acc  # chance is 0.25


def test_rendered_world_serves_fresh_seen_pairs_only():
    source = RenderedWorld(CFG)
    held = {(c.colour, c.shape, c.action) for c in plan_world(CFG) if c.split == "heldout"}
    assert held and not held & set(source.pairs)
    rng = np.random.default_rng(0)
    a, captions_a = source.batch(rng, 6)
    b, captions_b = source.batch(rng, 6)
    assert a.shape == (6, CFG.num_frames, CFG.size, CFG.size, 3) and len(set(captions_a)) == 6
    assert not torch.equal(a, b)  # new clips every batch
    model, history = train(source, TrainSettings(steps=20, batch_size=12, warmup_steps=2, lr=3e-3))
    assert np.mean([h["loss"] for h in history[-5:]]) < np.mean([h["loss"] for h in history[:5]])


def test_clip_pool_from_written_world_files(tmp_path):
    from datasets.world import write_world

    files = write_world(tmp_path, CFG)
    pool = ClipPool.from_csv(tmp_path, files["train_captions"])
    train_clips = [c for c in plan_world(CFG) if c.split == "train"]
    assert pool.frames.shape == (len(train_clips), CFG.num_frames, CFG.size, CFG.size, 3)
    assert sorted(pool.captions) == sorted(c.caption for c in train_clips)
    frames, captions = pool.batch(np.random.default_rng(0), 100)
    assert len(set(captions)) == len(captions) == len(pool.by_caption)  # distinct captions, capped at what exists
