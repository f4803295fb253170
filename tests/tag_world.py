"""The small action world the tag and serve tests tag, and a tiny CLIP trained on it (text search needs a model that
learned something)."""
from __future__ import annotations

from pathlib import Path

from configs.schema import TrainConfig
from datasets.world import WorldConfig
from pipeline.jobs.train import TrainResult, train

WORLD = WorldConfig(seed=0, colours=("red", "blue"), shapes=("square", "circle"),
                    actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5,
                    clips_per_pair=1, test_clips_per_pair=1)
LABELS = ("moving left", "moving right", "growing", "blinking")
TRAIN_WORLD = WorldConfig(seed=0, colours=WORLD.colours, shapes=WORLD.shapes, actions=WORLD.actions, held_out_every=5)


def train_world_model(folder: Path) -> TrainResult:
    """A tiny CLIP trained 400 steps on the small world (~25 s); its model.pt is in ``.out``."""
    cfg = TrainConfig(name="t", world=TRAIN_WORLD, steps=400, batch_size=26, warmup_steps=10, lr=2e-3,
                      checkpoint_every=400, output_dir=str(folder / "run"))
    import torch

    with torch.enable_grad():
        return train(cfg, progress=False)
