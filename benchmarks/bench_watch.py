#!/usr/bin/env python3
"""watch on a live loopback stream: latency from the arrival of the frame that completes a window to the window's
decision (p50, p95), windows dropped because the model fell behind, and this process's resident memory over time.

A sender process remuxes a pre-encoded MPEG-TS clip (H.264, 24 fps, a keyframe a second; written once by this
script) over UDP to 127.0.0.1 at its own pace, looping it for ``--minutes``, so the sender costs almost no CPU
(no encoding); ``watch`` runs in this process with the given model. Nothing here is asserted: the numbers are
printed, with the machine's core count. The issue's targets: p95 <= 1.5 s with ViT-B/32 at 8 frames per 4 s window
and a 1 s stride on 2 cores, and memory flat within 50 MB after the first minute.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SENDER = """
import sys, time, av
path, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start, offset = time.monotonic(), 0.0
with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as out:
    with av.open(path) as src:
        template = src.streams.video[0]
        stream = out.add_stream_from_template(template)
        length = float(src.duration) / 1e6
    while time.monotonic() - start < seconds:
        with av.open(path) as src:
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is None:
                    continue
                t = float(packet.dts * packet.time_base) + offset
                time.sleep(max(0.0, t - (time.monotonic() - start)))
                shift = int(round(offset / packet.time_base))
                packet.dts += shift
                packet.pts = None if packet.pts is None else packet.pts + shift
                packet.stream = stream
                out.mux(packet)
        offset += length
"""


def write_clip(path: Path, seconds: int, size: int) -> Path:
    from datasets.synthetic import DIRECTIONS, moving_square_frames, write_video

    frames = (f for i in range(seconds // 4) for f in moving_square_frames(
        list(DIRECTIONS)[i % len(DIRECTIONS)], "red", size=size, num_frames=96, square=size // 5, seed=i))
    return write_video(path, frames, fps=24, container="mpegts",
                       options={"crf": "23", "g": "24", "x264-params": "mbtree=0:scenecut=0"})


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    from pipeline.jobs.watch import WatchSettings, watch
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:ViT-B/32")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--stride", type=float, default=1.0)
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=320, help="frame side of the streamed clip")
    args = ap.parse_args()
    import torch

    from pipeline.model.loading import resolve_precision

    args.precision, why = resolve_precision(args.precision, torch.device("cpu"))
    print(f"precision: {args.precision} ({why})")
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.ts", 60, args.size)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = WatchSettings(RuntimeSettings(args.model, device="cpu", precision=args.precision),
                                 tuple(f"something {d}" for d in ("moving left", "moving right", "moving up",
                                                                  "moving down")),
                                 ProtocolOverrides(templates="none", num_frames=args.num_frames),
                                 window_s=args.window, stride_s=args.stride)
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(clip), str(port), str(args.minutes * 60 + 5)],
                                  env=env)
        stop, memory = threading.Event(), []
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(1.0):
                memory.append((time.monotonic() - started, rss_mb()))
                if time.monotonic() - started > args.minutes * 60:
                    stop.set()

        threading.Thread(target=sample, daemon=True).start()
        try:
            summary = watch(settings, f"udp://127.0.0.1:{port}", stop=stop)
        finally:
            sender.kill()
        lat = np.percentile(summary.latencies, [50, 95]) if summary.latencies else [float("nan")] * 2
        after = [m for t, m in memory if t >= 60] or [m for _, m in memory]
        print(f"\nwatch {args.model} ({args.precision}), {args.num_frames} frames per {args.window:g} s window every "
              f"{args.stride:g} s, {args.size}x{args.size} H.264 at 24 fps over UDP on 127.0.0.1, "
              f"{args.minutes:g} min, {len(os.sched_getaffinity(0))} cores")
        print(f"windows decided {summary.windows}, dropped {summary.dropped}, gaps {summary.gaps}; latency p50 "
              f"{lat[0]:.3f} s, p95 {lat[1]:.3f} s (target p95 <= 1.5 s)")
        print(f"resident memory: {after[0]:.0f} MB at the first minute's end, {min(after):.0f}-{max(after):.0f} MB "
              f"after it: {max(after) - min(after):.1f} MB range (target: within 50 MB)")


if __name__ == "__main__":
    main()
