"""The demo job end to end on a small world: every stage runs, the numbers in results.json agree with the files the
stages wrote, and the report carries its plots."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from videos import reference_frames

import clip_model
from clip_model.temporal import VideoCLIP
from datasets.synthetic import write_video
from datasets.world import WorldConfig
from pipeline.jobs.demo import DemoSettings, direction_pairs, reversal_cosines, run_demo

WORLD = WorldConfig(seed=1, colours=("red", "blue"), shapes=("square", "circle"),
                    actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5,
                    clips_per_pair=2, test_clips_per_pair=3)


def test_direction_pairs_scores_only_within_pair_decisions():
    labels = ["moving left", "moving left", "moving right", "moving right", "growing"]
    preds = ["moving left", "moving right", "moving right", "growing", "shrinking"]
    assert direction_pairs(labels, preds) == {"moving left / moving right": pytest.approx(2 / 3),
                                              "growing / shrinking": 0.0}  # the 4th clip left the pair: not counted


def _reference_reversal_cosines(model: clip_model.CLIP, head: torch.nn.Module, video: Path) -> dict[str, float]:
    """Written apart from reversal_cosines: PyAV's sequential decode, the TSN indices by formula, CLIP's normalisation
    spelled out (the videos here are already the model's size), each direction encoded and pooled on its own."""
    frames = reference_frames(video)
    idx = [math.floor((i + 0.5) * len(frames) / 8) for i in range(8)]
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float() / 255  # (T, 3, S, S)
    cfg = model.preprocess_config
    assert x.shape[-1] == x.shape[-2] == cfg.image_size
    x = (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        fwd, bwd = model.encode_image(x), model.encode_image(x.flip(0))  # (T, E) each: the clip, played backwards
        pooled = {"mean": (fwd.mean(0), bwd.mean(0)), "temporal": (head(fwd[None])[0], head(bwd[None])[0])}
    return {k: float(F.cosine_similarity(a, b, dim=0)) for k, (a, b) in pooled.items()}


def test_reversal_cosines_match_an_independent_computation(tmp_path):
    """With its residual branches off zero the pooler sees order: its cosine is below 1 (measured 0.9945), so
    reversing nothing, or comparing the clip with itself, would show. The mean's cosine is 1 by construction of mean
    pooling; it is checked only as agreeing with the reference."""
    clip = clip_model.create_model("tiny-vit", seed=0).eval()
    torch.manual_seed(0)
    head = VideoCLIP(clip, "temporal", num_frames=8).temporal.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in head.transformer.resblocks:  # as training would move them: away from their zero init
            for layer in (block.attn.out_proj, block.mlp.c_proj):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * layer.in_features ** -0.5)
    path = clip_model.save_checkpoint(clip, tmp_path / "model.pt", temporal=head)
    colours = np.random.default_rng(0).integers(0, 256, (16, 3), dtype=np.uint8)  # one flat colour per frame
    video = write_video(tmp_path / "v.mp4", np.broadcast_to(colours[:, None, None], (16, 32, 32, 3)).copy(), fps=8,
                        crf=12)
    got, ref = reversal_cosines(path, video), _reference_reversal_cosines(clip, head, video)
    assert ref["temporal"] < 1 - 1e-3, ref
    assert got == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
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
    with open(tmp_path / "linear_probe" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == saved["linear_probe"]["test_videos"] == 9
    assert saved["linear_probe"]["top1"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in rows]))
    # The cosines are those of the trained model.pt on the first classified file. 30 steps barely move the pooler's
    # residual branches off zero, so here both round to 1.0 in float32 and cannot show order sensitivity:
    # test_reversal_cosines_match_an_independent_computation and tests/test_temporal.py check that.
    model, _, head = clip_model.load_with_temporal(tmp_path / "train_temporal" / "model.pt")
    expected = _reference_reversal_cosines(model, head, Path(saved["classified"][0]["path"]))
    assert saved["reversal_cosine"] == pytest.approx(expected, abs=1e-5)
    assert len(saved["classified"]) == 3 and all(c["labels"] for c in saved["classified"])  # one per held-out action
    tagging = saved["tagging"]
    assert tagging["videos"] == tagging["ok"] == 9 and not tagging["failed"]
    # one window covers each 1 s clip, so tag's top-1 must equal the zero-shot benchmark's through the same pooler
    assert tagging["top1"] == pytest.approx(saved["zero_shot"]["temporal"]["top1"])
    assert len(tagging["search"]["hits"]) == 5 and all(h["true"] in WORLD.actions for h in tagging["search"]["hits"])
    for pooling in ("mean", "temporal"):  # one clip of each of the three held-out pairs, found by its caption
        queries = pd.read_csv(tmp_path / f"retrieval_{pooling}" / "predictions.csv")
        t2v = queries[queries.direction == "t2v"]
        assert len(t2v) == saved["retrieval"][pooling]["videos"] == 3
        assert saved["retrieval"][pooling]["R@1"] == pytest.approx(100 * np.mean(t2v["rank"] == 1))
        assert saved["retrieval"][pooling]["MdR"] == pytest.approx(float(np.median(t2v["rank"])))
    report = (tmp_path / "report.html").read_text()
    assert "Text-to-video retrieval" in report
    assert len(re.findall(r"data:image/png;base64,", report)) == 4  # loss, two confusion matrices, examples
    assert "blind spot" in report and results == saved
    index = tmp_path / "tags.csv.index"
    assert tagging["serve"] == f"python run_pipeline.py serve {index}" and f"<code>{tagging['serve']}</code>" in report
    reused = [tmp_path / "train_temporal" / "model.pt", *sorted((tmp_path / "world" / "videos").glob("*.mp4"))]
    written = [p.stat().st_mtime_ns for p in reused]
    again = run_demo(tmp_path, DemoSettings(world=WORLD, steps=30, batch_size=16, classify_files=4), progress=False)
    assert [p.stat().st_mtime_ns for p in reused] == written  # a rerun reuses the world and the finished checkpoint
    assert again["zero_shot"] == saved["zero_shot"]
