#!/usr/bin/env python3
"""Where `tag`'s main process spends its time, and what one setting changes: `tag()` run several times on the same
generated folder (H.264 MP4s, as ``bench_tag.py`` writes them), printing videos/s per run, and with ``--profile``
the main process's cProfile (decode workers are other processes: their time shows as waiting, ``select.poll``).

    python benchmarks/profile_tag.py [--model random:ViT-B/32] [--precision bf16] [--videos 12] [--runs 3]
                                     [--threads N] [--workers 2] [--profile]

Change one setting a run of this script (``--threads``, ``--workers``, or an environment variable such as
``OMP_WAIT_POLICY=PASSIVE``) and compare the rates; two video counts (``--videos 12`` and ``48``) separate a job's
fixed cost from its cost per video. Results: docs/benchmarks.md ("Tagging speed and memory").
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:ViT-B/32")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads of the model")
    ap.add_argument("--workers", type=int, default=2, help="decode workers")
    ap.add_argument("--profile", action="store_true", help="print the main process's top functions by own time")
    args = ap.parse_args()

    import torch
    from bench_tag import write_folder

    from datasets.synthetic import DIRECTIONS
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    torch.set_num_threads(args.threads)
    settings = TagSettings(RuntimeSettings(args.model, device="cpu", precision=args.precision,
                                           decode_workers=args.workers), tuple(DIRECTIONS),
                           overrides=ProtocolOverrides(templates="none", num_frames=8), window_s=4.0, stride_s=2.0,
                           commit_every=16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        write_folder(folder, args.videos, 224, 6.0, 24)
        profiler = cProfile.Profile() if args.profile else None
        rates = []
        for k in range(args.runs):
            out = Path(tmp) / f"run{k}" / "tags.parquet"
            t = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            tag(settings, folder, out, progress=False)
            if profiler is not None:
                profiler.disable()
            rates.append(args.videos / (time.perf_counter() - t))
            shutil.rmtree(out.parent)
    print(f"{args.videos} videos, {args.model} in {args.precision}, {args.threads} torch threads, {args.workers} "
          f"decode workers, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}: "
          + " / ".join(f"{r:.2f}" for r in rates) + " videos/s")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
