"""A procedural world of actions for training and testing CLIP on this machine (no real data reaches it).

Objects are (colour, shape) pairs with a dark marker off their centre, so rotation is visible. Each clip shows one
object doing one action over a varied background with static distractor objects and noise; speed, start position,
size and duration vary. Ten actions, four of them pairs that differ only by the direction of time (left/right,
up/down, growing/shrinking, clockwise/anticlockwise): the frames of one are, up to position, the frames of the other
reversed, so pooling that ignores order cannot tell them apart.

Some (object, action) pairs never appear in training: zero-shot evaluation runs on those. The world is a pure
function of its config, seed included.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .synthetic import write_video

ACTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking",
           "rotating clockwise", "rotating anticlockwise", "blinking", "bouncing")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
SHAPES = ("square", "circle", "triangle")
TIME_REVERSED_PAIRS = (("moving left", "moving right"), ("moving up", "moving down"), ("growing", "shrinking"),
                       ("rotating clockwise", "rotating anticlockwise"))


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 32  # frame side in pixels
    num_frames: int = 8  # frames per clip as rendered (videos hold exactly these frames)
    fps: int = 8
    clips_per_pair: int = 6  # clips per seen (object, action) pair in the training split
    test_clips_per_pair: int = 4  # clips per held-out pair in the zero-shot split
    held_out_every: int = 4  # pair (object i, action a) is held out when (i + a) % held_out_every == 0
    actions: tuple[str, ...] = ACTIONS
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.actions) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown actions {unknown}; choose from {', '.join(ACTIONS)}")
        if self.size % 2 or self.size < 16:
            raise ValueError(f"size ({self.size}) must be an even number >= 16 (H.264 needs even sizes)")
        if self.num_frames < 4:
            raise ValueError(f"num_frames ({self.num_frames}) must be >= 4")

    @property
    def objects(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colours for s in self.shapes]


@dataclass(frozen=True)
class Clip:
    colour: str
    shape: str
    action: str
    seed: int
    split: str  # "train" (seen pairs) or "heldout" (pairs never trained on)

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} {self.action}"

    @property
    def name(self) -> str:
        return f"{self.split}_{self.colour}_{self.shape}_{self.action.replace(' ', '-')}_{self.seed}"


def is_held_out(cfg: WorldConfig, obj_index: int, action_index: int) -> bool:
    return (obj_index + action_index) % cfg.held_out_every == 0


def plan_world(cfg: WorldConfig) -> list[Clip]:
    """Every clip of the world, deterministic in ``cfg``: seen pairs in train, held-out pairs in heldout."""
    rng = np.random.default_rng(cfg.seed)
    clips = []
    for i, (colour, shape) in enumerate(cfg.objects):
        for a, action in enumerate(cfg.actions):
            held = is_held_out(cfg, i, a)
            n = cfg.test_clips_per_pair if held else cfg.clips_per_pair
            clips += [Clip(colour, shape, action, int(rng.integers(2**31)), "heldout" if held else "train")
                      for _ in range(n)]
    return clips


@dataclass(frozen=True)
class _Motion:
    centre: np.ndarray  # (T, 2) x, y in pixels
    scale: np.ndarray  # (T,) radius in pixels
    angle: np.ndarray  # (T,) radians
    visible: np.ndarray  # (T,) bool
    extras: dict = field(default_factory=dict)


def _motion(action: str, cfg: WorldConfig, rng: np.random.Generator) -> _Motion:
    t = np.linspace(0.0, 1.0, cfg.num_frames)
    s = cfg.size
    r0 = rng.uniform(0.14, 0.2) * s
    centre = np.tile(rng.uniform(0.35, 0.65, 2) * s, (cfg.num_frames, 1))
    scale, angle = np.full(cfg.num_frames, r0), np.full(cfg.num_frames, rng.uniform(0, 2 * np.pi))
    visible = np.ones(cfg.num_frames, dtype=bool)
    travel = rng.uniform(0.35, 0.55) * s  # speed varies
    direction = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    if action in direction:
        d = np.array(direction[action], dtype=float)
        start = s / 2 - d * travel / 2 + (1 - np.abs(d)) * rng.uniform(-0.15, 0.15, 2) * s
        centre = start + t[:, None] * d * travel
    elif action in ("growing", "shrinking"):
        lo, hi = rng.uniform(0.08, 0.11) * s, rng.uniform(0.24, 0.3) * s
        scale = lo + (hi - lo) * (t if action == "growing" else 1 - t)
    elif action.startswith("rotating"):
        turn = rng.uniform(0.6, 0.9) * np.pi * (1 if action == "rotating clockwise" else -1)
        angle = angle + turn * t  # image y points down, so a growing angle turns clockwise on screen
    elif action == "blinking":
        phase = int(rng.integers(2))
        visible = ((np.arange(cfg.num_frames) + phase) // 2) % 2 == 0
    elif action == "bouncing":
        height = rng.uniform(0.25, 0.35) * s
        centre = centre.copy()
        centre[:, 1] = s * 0.72 - height * np.abs(np.sin(np.pi * 2 * t))
    return _Motion(centre, scale, angle, visible)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of a shape of 'radius' r, rotated by ``angle``, on a pixel grid."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s  # object-local coordinates
    v = -(xx - cx) * s + (yy - cy) * c
    if shape == "square":
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if shape == "circle":
        return u**2 + v**2 <= r**2
    # triangle pointing along +u
    return (u >= -r * 0.7) & (np.abs(v) <= (r - u) * 0.6) & (u <= r)


def _background(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s] / s
    a, b = rng.uniform(60, 150, 3), rng.uniform(-40, 40, 3)
    bg = a + b * (xx[..., None] * rng.uniform(-1, 1) + yy[..., None] * rng.uniform(-1, 1))
    return bg


def render(clip: Clip, cfg: WorldConfig) -> np.ndarray:
    """uint8 (T, size, size, 3) frames of one clip."""
    rng = np.random.default_rng(clip.seed)
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    bg = _background(cfg, rng)
    distractors = []
    for _ in range(int(rng.integers(0, 3))):
        colour = rng.choice([c for c in cfg.colours if c != clip.colour])
        distractors.append((str(rng.choice(cfg.shapes)), COLOURS[str(colour)], rng.uniform(0.1, 0.9, 2) * s,
                            rng.uniform(0.06, 0.1) * s, rng.uniform(0, 2 * np.pi)))
    m = _motion(clip.action, cfg, rng)
    noise_level = rng.uniform(2, 8)
    frames = np.empty((cfg.num_frames, s, s, 3), dtype=np.uint8)
    for t in range(cfg.num_frames):
        img = bg.copy()
        for shape, colour, (dx, dy), r, ang in distractors:
            img[_shape_mask(shape, yy, xx, dx, dy, r, ang)] = np.array(colour) * 0.8
        if m.visible[t]:
            cx, cy = m.centre[t]
            img[_shape_mask(clip.shape, yy, xx, cx, cy, m.scale[t], m.angle[t])] = COLOURS[clip.colour]
            mx, my = cx + 0.5 * m.scale[t] * np.cos(m.angle[t]), cy + 0.5 * m.scale[t] * np.sin(m.angle[t])
            img[(xx - mx) ** 2 + (yy - my) ** 2 <= max(1.2, 0.22 * m.scale[t]) ** 2] = (20, 20, 20)  # the marker
        img += rng.normal(0, noise_level, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_world(out: str | Path, cfg: WorldConfig = WorldConfig()) -> dict[str, Path]:
    """Render and encode every clip as H.264, and write annotations in formats ``benchmark`` reads.

    Files: ``videos/<name>.mp4``; ``train_captions.csv`` / ``heldout_captions.csv`` (path, caption, action, colour,
    shape); ``train.csv`` / ``heldout.csv`` (path,label with the action as label: the generic CSV format);
    ``actions.txt`` (one action per line). Returns those paths by name.
    """
    out = Path(out)
    clips = plan_world(cfg)
    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    for clip in clips:
        path = out / "videos" / f"{clip.name}.mp4"
        if not path.exists():  # re-running on an existing world only fills in what is missing
            write_video(path, render(clip, cfg), fps=cfg.fps, crf=12)
        rows[clip.split].append({"path": f"videos/{clip.name}.mp4", "caption": clip.caption, "action": clip.action,
                                 "colour": clip.colour, "shape": clip.shape})
    files = {"actions": out / "actions.txt"}
    files["actions"].write_text("\n".join(cfg.actions) + "\n")
    for split, items in rows.items():
        files[f"{split}_captions"] = out / f"{split}_captions.csv"
        with open(files[f"{split}_captions"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "caption", "action", "colour", "shape"])
            w.writeheader()
            w.writerows(items)
        files[split] = out / f"{split}.csv"
        with open(files[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows([(r["path"], r["action"]) for r in items])
    return files
