"""Contrastive training: it learns, accumulation is exact, resume after kill -9 equals an uninterrupted run, two
torchrun ranks equal one process, frozen towers stay put, and the exported model classifies through classify."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import clip_model
from configs.schema import ConfigError, TrainConfig, load_config
from datasets.world import WorldConfig, plan_world, prompt_templates, render
from pipeline.jobs.train import build_model, config_dict, evaluate_actions, train
from pipeline.jobs.train_data import ClipPool, RenderedWorld

ROOT = Path(__file__).resolve().parents[1]
WORLD = WorldConfig(seed=0, colours=("red", "blue"), shapes=("square", "circle"),
                    actions=("moving left", "moving right", "growing", "blinking"), held_out_every=5)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(name="t", world=WORLD, steps=12, batch_size=16, warmup_steps=3, lr=3e-3, checkpoint_every=4,
                output_dir=str(tmp_path / "run"))
    return TrainConfig(**(base | kw))


def _write_yaml(path: Path, cfg: TrainConfig) -> Path:
    path.write_text(yaml.safe_dump(config_dict(cfg)))
    return path


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=(os.environ | (env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_a_short_run_lowers_the_loss_and_beats_chance_on_held_out_pairs(trained_run):
    """400 steps on a 4-object, 4-action world (the shared run of tag_world, which the tag and serve tests search
    with): measured here, loss 3.37 -> 1.99 and 73 % held-out top-1."""
    from tag_world import TRAIN_WORLD

    result = trained_run
    assert TRAIN_WORLD == WORLD and len(result.history) == 400  # the held-out pairs below are that run's
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])
    held = [c for c in plan_world(WORLD) if c.split == "heldout"]
    assert {(c.colour, c.shape, c.action) for c in held}.isdisjoint(RenderedWorld(WORLD).pairs)
    clips = [type(c)(c.colour, c.shape, c.action, seed, "heldout") for c in held for seed in range(20)]
    frames = torch.from_numpy(np.stack([render(c, WORLD) for c in clips]))
    labels = [WORLD.actions.index(c.action) for c in clips]
    acc = evaluate_actions(result.model, frames, list(WORLD.actions), labels, prompt_templates(WORLD))["top1"]
    assert acc > 0.5, acc  # chance is 0.25; 60 clips of three pairs never trained on


@pytest.mark.slow
def test_gradient_accumulation_is_exact(tmp_path):
    """Two micro-batches give the whole batch's loss and update (its negatives are the whole batch's)."""
    one = train(_cfg(tmp_path / "a", steps=3), progress=False)
    two = train(_cfg(tmp_path / "b", steps=3, grad_accum=2), progress=False)
    np.testing.assert_allclose([h["loss"] for h in two.history], [h["loss"] for h in one.history], rtol=1e-5)
    _assert_same_weights(one.model.state_dict(), two.model.state_dict())
    four = train(_cfg(tmp_path / "c", steps=1, grad_accum=4), progress=False)
    assert four.history[0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-5)


@pytest.mark.slow
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    cfg = _cfg(tmp_path, steps=40, batch_size=32, checkpoint_every=5)
    config = _write_yaml(tmp_path / "train.yaml", cfg)
    run = Path(cfg.output_dir)
    proc = _cli("run_pipeline.py", "train", "--config", str(config))
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere past the first checkpoint, mid-step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "model.pt").exists(), "the run ended before the kill"
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < killed_at < cfg.steps
    resumed = _cli("run_pipeline.py", "train", "--config", str(config))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed at step {killed_at}" in out

    straight = train(_cfg(tmp_path, steps=40, batch_size=32, checkpoint_every=5, output_dir=str(tmp_path / "ref")),
                     progress=False)
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, cfg.steps + 1))  # each step once
    np.testing.assert_allclose(_losses(run), [h["loss"] for h in straight.history], rtol=1e-4)
    resumed_model, _ = clip_model.load(run / "model.pt")
    _assert_same_weights(straight.model.clip.state_dict(), resumed_model.state_dict())


@pytest.mark.slow
def test_a_resume_with_changed_settings_is_refused_naming_them(tmp_path):
    train(_cfg(tmp_path, steps=4), progress=False)
    with pytest.raises(ValueError, match=r"settings changed.*lr \(0\.003 -> 0\.001\)"):
        train(_cfg(tmp_path, steps=4, lr=1e-3), progress=False)
    with pytest.raises(ValueError, match=r"world\.seed \(0 -> 1\)"):
        train(_cfg(tmp_path, steps=4, world=WorldConfig(**(config_dict(_cfg(tmp_path))["world"] | {"seed": 1}))),
              progress=False)
    assert train(_cfg(tmp_path, steps=4, lr=1e-3), restart=True, progress=False).resumed_from == 0


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(tmp_path):
    cfg = _cfg(tmp_path, steps=4, batch_size=16, grad_accum=2, output_dir=str(tmp_path / "ddp"))
    config = _write_yaml(tmp_path / "train.yaml", cfg)
    proc = _cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run_pipeline.py", "train",
                "--config", str(config), env={"OMP_NUM_THREADS": "1"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    single = train(_cfg(tmp_path, steps=4, batch_size=16, grad_accum=2, output_dir=str(tmp_path / "one")),
                   progress=False)
    np.testing.assert_allclose(_losses(tmp_path / "ddp"), [h["loss"] for h in single.history], rtol=1e-4)
    ddp_model, _ = clip_model.load(tmp_path / "ddp" / "model.pt")
    _assert_same_weights(single.model.clip.state_dict(), ddp_model.state_dict())
    head = clip_model.load_temporal(tmp_path / "ddp" / "model.pt")
    _assert_same_weights(single.model.temporal.state_dict(), head.state_dict())


def _assert_same_weights(expected: dict, got: dict) -> None:
    """Equal within float noise, except attention's key bias: softmax ignores it, so its true gradient is exactly zero
    and AdamW turns rounding noise (which differs with the reduction order) into steps of size lr."""
    assert expected.keys() == got.keys()
    for name, a in expected.items():
        b = got[name]
        if name.endswith("in_proj_bias"):
            width = len(a) // 3
            a, b = torch.cat([a[:width], a[2 * width:]]), torch.cat([b[:width], b[2 * width:]])  # q and v biases
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("freeze", ["image", "text", "both"])
def test_frozen_towers_do_not_move(tmp_path, freeze):
    cfg = _cfg(tmp_path, steps=3, freeze=freeze)
    init = build_model(cfg, WORLD.num_frames).state_dict()  # the same seeded start train() builds
    result = train(cfg, progress=False)
    for name, value in result.model.state_dict().items():
        tower = "image" if name.startswith("clip.visual.") else "text" if name.startswith("clip.") else "trained"
        if name == "clip.logit_scale":
            tower = "trained"  # the temperature learns whatever is frozen
        if tower != "trained" and freeze in (tower, "both"):
            assert torch.equal(value, init[name]), (name, freeze)
        elif not name.endswith("in_proj_bias"):  # its key third has zero gradient (softmax ignores it)
            assert not torch.equal(value, init[name]), (name, freeze)


def test_metrics_log_as_jsonl_and_self_describing_outputs(tmp_path):
    result = train(_cfg(tmp_path, steps=5, metrics="jsonl"), progress=False)
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[4]["lr"] < rows[2]["lr"]  # warmup 3 steps, then cosine
    saved = yaml.safe_load((result.out / "config.yaml").read_text())
    assert load_config(result.out / "config.yaml", cls=TrainConfig) == _cfg(tmp_path, steps=5, metrics="jsonl")
    assert saved["world"]["actions"] == list(WORLD.actions)
    state = torch.load(result.out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["clip_config"] == result.model.clip.config.to_dict()
    assert state["temporal_config"]["num_frames"] == WORLD.num_frames
    assert torch.load(result.out / "model.pt", weights_only=True)["training"]["steps"] == 5


def _train_recording_dtypes(cfg: TrainConfig):
    """train(cfg), and the output dtypes of every Linear and Conv2d forward run meanwhile (a global forward hook)."""
    seen: set[torch.dtype] = set()

    def hook(module, args, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and torch.is_grad_enabled():
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        return train(cfg, progress=False), seen
    finally:
        handle.remove()


@pytest.mark.slow
def test_amp_bf16_on_cpu_trains_close_to_fp32(tmp_path):
    """The matmuls of the training forward really run in bf16 (autocast), the master weights stay fp32, and the losses
    differ from fp32's by bf16 rounding: more than zero (the same seed and data give bit-equal fp32 losses), under 2 %."""
    fp32, fp32_dtypes = _train_recording_dtypes(_cfg(tmp_path / "a", steps=3))
    bf16, bf16_dtypes = _train_recording_dtypes(_cfg(tmp_path / "b", steps=3, amp="bf16"))
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    got, ref = np.array([h["loss"] for h in bf16.history]), np.array([h["loss"] for h in fp32.history])
    np.testing.assert_allclose(got, ref, rtol=0.02)
    assert np.abs(got - ref).max() > 1e-4, (got, ref)  # autocast off would give fp32's losses exactly


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="grad_accum"):
        _cfg(tmp_path, batch_size=10, grad_accum=3)
    with pytest.raises(ConfigError, match="freeze: both with pooling: mean"):
        _cfg(tmp_path, freeze="both", pooling="mean")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfreeze: visual\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: freeze 'visual' is not valid"):
        load_config(bad, cls=TrainConfig)
    for path in sorted((ROOT / "configs").glob("train_*.yaml")):
        assert load_config(path, cls=TrainConfig).name == path.stem  # shipped configs load


@pytest.mark.slow
def test_clip_pool_from_a_captions_csv(tmp_path):
    from datasets.world import write_world

    files = write_world(tmp_path, WORLD)
    pool = ClipPool.from_csv(files["train_captions"], num_frames=4)
    train_clips = [c for c in plan_world(WORLD) if c.split == "train"]
    assert pool.frames.shape == (len(train_clips), 4, WORLD.size, WORLD.size, 3)
    batch = pool.batch(step=0, size=len(train_clips) + 5)
    assert len(batch.captions) == len(train_clips) + 5  # every clip once, then five more
    same = [i for i, c in enumerate(batch.captions) if c == batch.captions[0]]
    assert len(same) > 1 and all(torch.equal(batch.clip_keys[i], batch.clip_keys[0]) for i in same)
    assert torch.equal(pool.batch(step=3, size=8, rows=slice(4, 8)).frames, pool.batch(step=3, size=8).frames[4:])
    with pytest.raises(ValueError, match="needs a header with 'path' and 'caption'"):
        (tmp_path / "bad.csv").write_text("file,text\na.mp4,hello\n")
        ClipPool.from_csv(tmp_path / "bad.csv")


def test_rendered_world_is_deterministic_per_step_and_slices_by_rank():
    source = RenderedWorld(WORLD, caption_dropout=0.5, seed=0)
    a, b = source.batch(7, 16), source.batch(7, 16)
    assert torch.equal(a.frames, b.frames) and a.captions == b.captions
    assert not torch.equal(source.batch(8, 16).frames, a.frames)
    half = source.batch(7, 16, slice(8, 16))
    assert torch.equal(half.frames, a.frames[8:]) and half.captions == a.captions[8:]
    assert len({c for c in a.captions}) > 1 and any(k == -1 for k in a.caption_keys.flatten().tolist())


@pytest.mark.slow
def test_exported_model_classifies_with_its_temporal_pooler(tmp_path):
    """model.pt through classify --pooling temporal equals the trained VideoCLIP run by hand on the decoded frames;
    so does classify with no pooling or templates named: the checkpoint brings the protocol it was trained for."""
    from datasets.world import write_world
    from pipeline.jobs.classify import ClassifySettings, classify_videos
    from pipeline.model.loading import load_model
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
    from pipeline.video.open import open_video

    result = train(_cfg(tmp_path, steps=6), progress=False)
    files = write_world(tmp_path / "world", WORLD)
    videos = sorted((tmp_path / "world" / "videos").glob("heldout_*.mp4"))[:3]
    settings = ClassifySettings(RuntimeSettings(str(result.out / "model.pt"), device="cpu", decode_workers=1),
                                WORLD.actions, overrides=ProtocolOverrides(templates=str(files["templates"]), pooling="temporal"), topk=4)
    got = torch.stack([r.probs for r in classify_videos(settings, videos)])  # (3, A)

    model, templates = result.model, prompt_templates(WORLD)
    with torch.no_grad():
        prompts = [t.format(a) for a in WORLD.actions for t in templates]
        text = torch.nn.functional.normalize(model.clip.encode_text(clip_model.tokenize(prompts)), dim=-1)
        text = torch.nn.functional.normalize(text.view(len(WORLD.actions), len(templates), -1).mean(1), dim=-1)
        frames = []
        for v in videos:
            with open_video(v) as reader:
                frames.append(reader.get_frames(np.arange(reader.num_frames)))
        transform = clip_model.ClipTransform(model.clip.preprocess_config)
        x = transform.video(torch.stack(frames).flatten(0, 1)).view(3, WORLD.num_frames, 3, 32, 32)
        video = torch.nn.functional.normalize(model.encode_video(x), dim=-1)
        scale = model.clip.logit_scale.exp().clamp(max=100)
        expected = (scale * video @ text.t()).softmax(-1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
    by_default = ClassifySettings(settings.runtime, WORLD.actions, topk=4)  # pooling, templates, frames: its own
    torch.testing.assert_close(torch.stack([r.probs for r in classify_videos(by_default, videos)]), expected,
                               atol=1e-4, rtol=1e-3)
    from pipeline.jobs.tag.job import TagSettings

    tag = TagSettings(settings.runtime, WORLD.actions).resolved(load_model(str(result.out / "model.pt"),
                                                                           torch.device("cpu")))
    resolved = tag.overrides
    assert (resolved.pooling, resolved.num_frames, list(resolved.templates)) == ("temporal", WORLD.num_frames, templates)
    assert tag.identity()["templates"] == templates  # stored in the index as JSON holds it
    with pytest.raises(ValueError, match="^random:tiny-vit: pooling temporal needs a checkpoint with a temporal "
                                         "pooler .* this one has none: use pooling mean$"):
        load_model("random:tiny-vit", torch.device("cpu"), pooling="temporal")
    plain = clip_model.save_checkpoint(result.model.clip, tmp_path / "plain.pt")
    unrecorded = load_model(str(plain), torch.device("cpu"))  # no protocol recorded: the family's
    assert (unrecorded.pooling, unrecorded.templates, unrecorded.num_frames(None)) == ("mean", "video", 8)
    with pytest.raises(ValueError, match="cannot record that protocol: templates must be a list of strings"):
        clip_model.save_checkpoint(result.model.clip, tmp_path / "bad.pt", protocol={"templates": ["no slot"]})
    with pytest.raises(clip_model.CheckpointError, match="no trained temporal pooler"):
        clip_model.load_temporal(plain)
    with pytest.raises(ValueError, match=f"^{plain}: pooling temporal needs a checkpoint with a temporal pooler"):
        load_model(str(plain), torch.device("cpu"), pooling="temporal")
    # one read of the file gives the same pooler as load_temporal
    head = load_model(str(result.out / "model.pt"), torch.device("cpu"), pooling="temporal").head
    assert head is not None
    alone = clip_model.load_temporal(result.out / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), alone.state_dict().values()))


@pytest.mark.slow
def test_training_prints_progress_lines_when_stderr_is_a_log(tmp_path):
    config = _write_yaml(tmp_path / "t.yaml", _cfg(tmp_path, steps=12, checkpoint_every=12))
    proc = _cli("run_pipeline.py", "train", "--config", str(config), env={"CLIP_VIDEO_PROGRESS_EVERY": "0"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if line.startswith("train t: ")]
    assert len(lines) == 12 and lines[-1].startswith("train t: 12/12 steps (100 %), ") and "loss " in lines[-1], err
