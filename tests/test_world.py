"""The synthetic action world: deterministic, held-out pairs really held out, real videos the readers accept."""
from __future__ import annotations

import numpy as np
import pandas as pd

from datasets.formats import read_csv
from datasets.world import (
    ACTIONS,
    CAPTION_FORMS,
    DEFAULT_ACTIONS,
    TIME_REVERSED_PAIRS,
    Clip,
    WorldConfig,
    caption,
    caption_keys,
    clip_keys,
    plan_world,
    prompt_templates,
    render,
    write_world,
)
from pipeline.video.open import open_video

SMALL = WorldConfig(seed=3, clips_per_pair=1, test_clips_per_pair=1, colours=("red", "blue"), shapes=("square",
                                                                                                     "triangle"))


def test_world_is_deterministic():
    a, b = plan_world(SMALL), plan_world(SMALL)
    assert a == b
    assert np.array_equal(render(a[5], SMALL), render(b[5], SMALL))
    other = plan_world(WorldConfig(seed=4, clips_per_pair=1, test_clips_per_pair=1, colours=("red", "blue"),
                                   shapes=("square", "triangle")))
    assert [c.seed for c in other] != [c.seed for c in a]


def test_held_out_pairs_never_train_and_everything_else_is_covered():
    cfg = WorldConfig()
    clips = plan_world(cfg)
    train = {(c.colour, c.shape, c.action) for c in clips if c.split == "train"}
    held = {(c.colour, c.shape, c.action) for c in clips if c.split == "heldout"}
    assert held and not (held & train)
    assert {a for _, _, a in train} == set(DEFAULT_ACTIONS) == {a for _, _, a in held}  # every action seen and tested
    assert {(c, s) for c, s, _ in train} == set(cfg.objects)  # every object seen in training
    assert len(DEFAULT_ACTIONS) >= 10 and all(a in ACTIONS and b in ACTIONS for a, b in TIME_REVERSED_PAIRS)
    assert sum(a in DEFAULT_ACTIONS and b in DEFAULT_ACTIONS for a, b in TIME_REVERSED_PAIRS) == 4
    assert not any(a.startswith(("circling", "rotating")) for a in DEFAULT_ACTIONS)


def test_actions_look_different():
    """Each action changes the frames the way its name says (measured on the object's mask)."""
    cfg = WorldConfig(seed=1, actions=ACTIONS)  # the turning actions too
    clips = {c.action: c for c in plan_world(cfg) if c.colour == "red" and c.shape == "square"}
    red = np.array([220, 40, 40])

    def mask(frames):
        return (np.abs(frames.astype(int) - red).sum(-1) < 60)  # (T, H, W)

    def centroid(m):
        ys, xs = np.nonzero(m)
        return xs.mean(), ys.mean()

    m = {a: mask(render(c, cfg)) for a, c in clips.items()}
    assert centroid(m["moving left"][-1])[0] < centroid(m["moving left"][0])[0] - 5
    assert centroid(m["moving right"][-1])[0] > centroid(m["moving right"][0])[0] + 5
    assert centroid(m["moving up"][-1])[1] < centroid(m["moving up"][0])[1] - 5
    assert centroid(m["moving down"][-1])[1] > centroid(m["moving down"][0])[1] + 5
    assert m["growing"][-1].sum() > 2 * m["growing"][0].sum()
    assert m["shrinking"][0].sum() > 2 * m["shrinking"][-1].sum()
    assert (m["blinking"].sum(axis=(1, 2)) < 3).any() and (m["blinking"].sum(axis=(1, 2)) > 20).any()
    assert m["fading in"][-1].sum() > 20 and m["fading in"][0].sum() < 3  # faint pixels are not red yet
    assert m["fading out"][0].sum() > 20 and m["fading out"][-1].sum() < 3

    def turn(points):  # total signed angle swept around the frame centre; positive is clockwise on screen (y down)
        angles = np.unwrap([np.arctan2(y - cfg.size / 2, x - cfg.size / 2) for x, y in points])
        return angles[-1] - angles[0]

    assert turn([centroid(f) for f in m["circling clockwise"]]) > 0.8 * np.pi
    assert turn([centroid(f) for f in m["circling anticlockwise"]]) < -0.8 * np.pi

    def marker_turn(action):  # the dark marker around the object's centre
        frames = render(clips[action], cfg).astype(int)
        dark = frames.sum(-1) < 150  # (T, H, W)
        offsets = [np.subtract(centroid(d), centroid(o | d)) for d, o in zip(dark, m[action])]
        return turn([(x + cfg.size / 2, y + cfg.size / 2) for x, y in offsets])

    assert marker_turn("rotating clockwise") > 0.6 * np.pi and marker_turn("rotating anticlockwise") < -0.6 * np.pi


def test_caption_forms_keys_and_templates():
    cfg = WorldConfig()
    clip = Clip("red", "triangle", "moving up", seed=0, split="train")
    assert [caption(clip, f) for f in CAPTION_FORMS] == [
        "a red triangle moving up", "a triangle moving up", "a red thing moving up", "something moving up"]
    assert clip_keys(cfg, clip) == (0, 2, 2)
    assert [caption_keys(cfg, clip, f) for f in CAPTION_FORMS] == [(0, 2, 2), (-1, 2, 2), (0, -1, 2), (-1, -1, 2)]
    templates = prompt_templates(cfg)
    assert len(templates) == 1 + 3 + 4 + 12 and all(t.count("{}") == 1 for t in templates)
    assert {t.format("moving up") for t in templates} >= {caption(clip, f) for f in CAPTION_FORMS}


def test_written_world_decodes_and_reads_as_a_dataset(tmp_path):
    files = write_world(tmp_path, SMALL)
    captions = pd.read_csv(files["train_captions"])
    assert set(captions.columns) == {"path", "caption", "action", "colour", "shape"}
    first = captions.iloc[0]
    assert first["caption"] == f"a {first['colour']} {first['shape']} {first['action']}"
    ds = read_csv(tmp_path, files["heldout"], classnames=list(DEFAULT_ACTIONS))
    assert not ds.missing and len(ds.records) == len(pd.read_csv(files["heldout"]))
    clip = plan_world(SMALL)[0]
    reader = open_video(tmp_path / "videos" / f"{clip.name}.mp4")
    assert reader.num_frames == SMALL.num_frames
    decoded = reader.get_frames(np.arange(SMALL.num_frames)).numpy().astype(int)
    own = np.abs(decoded - render(clip, SMALL).astype(int)).mean()  # H.264 at crf 12 smooths the pixel noise
    other = np.abs(decoded - render(plan_world(SMALL)[7], SMALL).astype(int)).mean()
    assert own < 10 and other > 2 * own, (own, other)


def test_the_same_frames_encode_to_the_same_bytes_every_time(tmp_path):
    """x264's macroblock tree made repeated encodes of identical frames differ within one process (so each demo run
    wrote another world); the world's videos are a pure function of its config, encoded bytes included."""
    from datasets.synthetic import write_video

    cfg = WorldConfig()
    clips = [render(c, cfg) for c in plan_world(cfg)[:20]]
    runs = [[write_video(tmp_path / f"{k}.mp4", frames, fps=cfg.fps, crf=12).read_bytes() for k, frames in
             enumerate(clips)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
