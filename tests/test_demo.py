"""The demo job end to end on a small world: every stage runs, the numbers in results.json agree with the files the
stages wrote, and the report carries its plots."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from datasets.world import WorldConfig
from pipeline.jobs.demo import DemoSettings, direction_pairs, run_demo

WORLD = WorldConfig(seed=1, colours=("red", "blue"), shapes=("square", "circle"),
                    actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5,
                    clips_per_pair=2, test_clips_per_pair=3)


def test_direction_pairs_scores_only_within_pair_decisions():
    labels = ["moving left", "moving left", "moving right", "moving right", "growing"]
    preds = ["moving left", "moving right", "moving right", "growing", "shrinking"]
    assert direction_pairs(labels, preds) == {"moving left / moving right": pytest.approx(2 / 3),
                                              "growing / shrinking": 0.0}  # the 4th clip left the pair: not counted


def test_small_demo_runs_every_stage(tmp_path):
    results = run_demo(tmp_path, DemoSettings(world=WORLD, steps=30, batch_size=16, classify_files=4), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["num_classes"] == 4 and set(saved["zero_shot"]) == {"mean", "temporal"}
    for pooling in ("mean", "temporal"):
        with open(tmp_path / f"zero_shot_{pooling}" / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == saved["zero_shot"][pooling]["videos"] == 3 * 3  # three held-out pairs, three clips each
        top1 = np.mean([r["label"] == r["prediction"] for r in rows])
        assert saved["zero_shot"][pooling]["top1"] == pytest.approx(top1)
    assert saved["train"]["steps"] == 30
    assert 0 <= saved["linear_probe"]["top1"] <= 1 and saved["linear_probe"]["test_videos"] == 9
    assert saved["reversal_cosine"]["mean"] == pytest.approx(1.0, abs=1e-5)  # order is invisible to the mean
    # (30 steps barely move the pooler's residual branches off zero; tests/test_temporal.py shows it learns order)
    assert saved["reversal_cosine"]["temporal"] <= saved["reversal_cosine"]["mean"] + 1e-6
    assert len(saved["classified"]) == 3 and all(c["labels"] for c in saved["classified"])  # one per held-out action
    tagging = saved["tagging"]
    assert tagging["videos"] == tagging["ok"] == 9 and not tagging["failed"]
    # one window covers each 1 s clip, so tag's top-1 must equal the zero-shot benchmark's through the same pooler
    assert tagging["top1"] == pytest.approx(saved["zero_shot"]["temporal"]["top1"])
    assert len(tagging["search"]["hits"]) == 5 and all(h["true"] in WORLD.actions for h in tagging["search"]["hits"])
    report = (tmp_path / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", report)) == 4  # loss, two confusion matrices, examples
    assert "blind spot" in report and results == saved
    again = run_demo(tmp_path, DemoSettings(world=WORLD, steps=30, batch_size=16, classify_files=4), progress=False)
    assert again["zero_shot"] == saved["zero_shot"]  # a rerun reuses the world and the finished checkpoints
