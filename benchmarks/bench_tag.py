#!/usr/bin/env python3
"""Tagging throughput: ``tag`` against a naive loop on the same folder, model and windows, in the same run.

Rows (videos/s; one folder of ``--videos`` H.264 files written by this script):
  * naive loop: decord, then one model call per video, all in this process (what most scripts do);
  * ``tag``: supervised decode workers, commits, outputs (the real job, end to end);
  * the standalone stages: decode only (the same workers, no model) and model only (frames decoded beforehand),
    so ``tag`` / slower stage shows how far decode and encode overlap.
Nothing here is asserted: the numbers are printed, with the machine's thread count.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.synthetic import DIRECTIONS, moving_square_frames, write_video  # noqa: E402
from pipeline.decode import DecodeRequest, decode_request  # noqa: E402
from pipeline.features import encode_clip  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.tag import TagSettings, tag  # noqa: E402
from pipeline.workers import decode_in_workers  # noqa: E402


def write_folder(folder: Path, n: int, size: int, seconds: float, fps: int) -> list[Path]:
    paths = []
    for i in range(n):
        frames = moving_square_frames(list(DIRECTIONS)[i % len(DIRECTIONS)], "red", size=size, num_frames=int(seconds * fps),
                                      square=size // 5, seed=i)
        paths.append(write_video(folder / f"v{i:03d}.mp4", frames, fps=fps))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--model", default="random:tiny-vit", help="e.g. random:ViT-B/32 for a model-bound run")
    ap.add_argument("--size", type=int, default=224, help="frame side of the generated videos")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    labels = tuple(DIRECTIONS)
    settings = TagSettings(model=args.model, labels=labels, templates="none", device="cpu", decode_workers=args.workers,
                           window_s=4.0, stride_s=2.0, commit_every=16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "archive"
        paths = write_folder(folder, args.videos, args.size, args.seconds, 24)
        model, transform = load_model(args.model, torch.device("cpu"))
        cap = 2 * model.preprocess_config.image_size
        requests = [DecodeRequest(str(p), settings.sampling(), "decord", cap) for p in paths]
        print(f"{args.videos} videos of {args.seconds:g} s at {args.size}x{args.size}, 24 fps; model {args.model}; "
              f"{threads} threads; windows {settings.window_s:g} s every {settings.stride_s:g} s, "
              f"{settings.num_frames} frames each")

        t = time.perf_counter()  # naive: decord in this process, one model call per video
        for r in requests:
            clip = decode_request(r)
            with torch.no_grad():
                encode_clip(model, transform, clip, batch_size=10_000)
        naive = len(paths) / (time.perf_counter() - t)

        t = time.perf_counter()
        tag(settings, folder, Path(tmp) / "tags.parquet", progress=False)
        ours = len(paths) / (time.perf_counter() - t)

        pyav = [DecodeRequest(str(p), settings.sampling(), "auto", cap) for p in paths]
        t = time.perf_counter()
        clips = [o.result for _, o in decode_in_workers(pyav, num_workers=args.workers)]
        decode_only = len(paths) / (time.perf_counter() - t)

        t = time.perf_counter()
        for clip in clips:
            encode_clip(model, transform, clip, batch_size=settings.batch_size)
        model_only = len(paths) / (time.perf_counter() - t)

    slower = min(decode_only, model_only)
    print(f"\n{'row':<44}{'videos/s':>10}")
    for name, rate in (("naive loop (decord + model per video)", naive), ("tag (ours, end to end)", ours),
                       (f"decode only ({args.workers} workers)", decode_only), ("model only (pre-decoded)", model_only)):
        print(f"{name:<44}{rate:10.2f}")
    print(f"\ntag / naive: {ours / naive:.2f}x (target >= 2x); tag / slower stage: {ours / slower:.0%} (target >= 80 %)")
    print(f"frames per video: {np.prod(clips[0].indices.shape)}")


if __name__ == "__main__":
    main()
