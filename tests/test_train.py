"""The contrastive training core: a short run on rendered clips lowers the loss and fits its training pairs."""
from __future__ import annotations

import numpy as np
import torch

from datasets.world import WorldConfig, plan_world, render
from pipeline.train import TrainSettings, evaluate_actions, train

CFG = WorldConfig(seed=0, clips_per_pair=3, colours=("red", "blue"), shapes=("square", "circle"),
                  actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5)


def test_short_training_lowers_the_loss_and_beats_chance_on_training_pairs():
    clips = [c for c in plan_world(CFG) if c.split == "train"]
    frames = torch.from_numpy(np.stack([render(c, CFG) for c in clips]))
    rows = [{"caption": c.caption, "action": c.action, "colour": c.colour, "shape": c.shape} for c in clips]
    model, history = train(frames, [r["caption"] for r in rows],
                           TrainSettings(steps=60, batch_size=16, warmup_steps=5, lr=3e-3, pooling="temporal"))
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    acc = evaluate_actions(model, frames, rows, list(CFG.actions), CFG.objects)["top1"]
    assert acc > 1 / len(CFG.actions) + 0.15, acc  # chance is 0.25
