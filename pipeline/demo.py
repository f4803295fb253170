"""The demo job. For now (before training lands) it generates a few action videos, builds an *untrained* tiny CLIP,
saves it as a self-describing checkpoint, reloads it and classifies the videos through the normal classify path.
Its predictions are meaningless by design: it proves the plumbing, not accuracy."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import clip_model
from datasets.synthetic import COLORS, DIRECTIONS, moving_square_frames, write_video

from .run import ClassifySettings, classify_videos


def run_demo(out: Path) -> dict:
    videos = []
    for i, (action, color) in enumerate(zip(DIRECTIONS, COLORS)):
        videos.append(write_video(out / "videos" / f"{color}_{action.replace(' ', '_')}.mp4",
                                  moving_square_frames(action, color, seed=i)))
    ckpt = clip_model.save_checkpoint(clip_model.create_model("tiny-vit", seed=0), out / "tiny_untrained.pt")
    settings = ClassifySettings(model=str(ckpt), classnames=tuple(DIRECTIONS), templates="video", topk=2, device="cpu")
    rows = [{"path": str(r.path), "labels": list(r.prediction.labels), "scores": list(r.prediction.scores)}
            if r.prediction else {"path": str(r.path), "error": r.error} for r in classify_videos(settings, videos)]
    results = {"note": "untrained model: predictions are not meaningful", "num_classes": len(DIRECTIONS),
               "videos": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def cmd_demo(args: argparse.Namespace) -> int:
    results = run_demo(Path(args.out))
    for row in results["videos"]:
        print(f"{Path(row['path']).name}: {row.get('labels') or row.get('error')}")
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate videos and run them through the pipeline with an untrained tiny model")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.set_defaults(func=cmd_demo)
