#!/usr/bin/env python3
"""Tagging throughput against a naive loop on the same folder, model and windows, and memory on a one-hour video.

Throughput rows (videos/s; one folder of ``--videos`` files written by this script: H.264 MP4, or with
``--container avi`` UCF101-like MPEG-4/XVID AVIs with B-frames), once per ``--precisions`` entry (fp32, bf16):
  * naive loop: decord, then one model call per video on all its windows' frames, in this process (what most
    scripts do);
  * ``tag``: the real job end to end (supervised decode workers streaming chunks, cross-video batches, commits,
    output files);
  * the standalone stages: decode only (the same workers and worker function, nothing encoded) and model only (the
    same chunks, decoded beforehand, through the same batching and pooling), so ``tag`` / slower stage shows how far
    decode and encode overlap.
Memory: ``tag`` on one video of ``--long-minutes`` minutes (a one-minute 640x360 clip remuxed end to end, so it
takes seconds to write), sampling the resident memory of this process and its worker processes every 50 ms.
With ``--keyframes``, tag with ``--sampling keyframes`` against exact tag on the same folder written with a keyframe
every second (as streaming encoders write them): the throughput ratio, and the cosine between each video's
embedding in the two indexes.
With ``--engine ray``, one more row: ``tag --engine ray`` (decode tasks on a local Ray cluster started beforehand,
its start-up time printed apart) and its ratio to ``tag``. Nothing here is asserted: the numbers are printed, with
the machine's core count.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datasets.synthetic import DIRECTIONS, moving_square_frames, write_video
from pipeline.features.window_decode import WindowChunk, WindowHeader, decode_windows
from pipeline.video.open import DecodeRequest, DecodeWorkers, decode_in_workers, decode_request
from pipeline.video.samplers import Sampling
from pipeline.video.supervisor import rss_mb

if TYPE_CHECKING:
    from pipeline.jobs.tag.job import TagSettings

# torch and the model-side modules are imported inside the functions: a spawned decode worker imports this script as
# its __main__, and must measure as light as it is under run_pipeline.py


def write_folder(folder: Path, n: int, size: int, seconds: float, fps: int, container: str = "mp4") -> list[Path]:
    paths = []
    for i in range(n):
        frames = moving_square_frames(list(DIRECTIONS)[i % len(DIRECTIONS)], "red", size=size,
                                      num_frames=int(seconds * fps), square=size // 5, seed=i)
        if container == "avi":  # MPEG-4 Part 2 tagged XVID, two B-frames, a keyframe every 12: UCF101's kind of file
            paths.append(write_video(folder / f"v{i:03d}.avi", frames, fps, codec="mpeg4", codec_tag="XVID",
                                     options={"g": "12", "bf": "2", "qscale": "4"}))
        else:
            paths.append(write_video(folder / f"v{i:03d}.mp4", frames, fps=fps))
    return paths


def write_long_video(path: Path, minutes: int, fps: int = 24) -> Path:
    """A ``minutes``-long 640x360 H.264 MP4: one minute of a square circling a textured background, encoded once
    and its packets muxed ``minutes`` times with shifted timestamps."""
    import av

    clip = path.with_name("minute.mp4")
    h, w, n = 360, 640, 60 * fps
    y, x = np.mgrid[0:h, 0:w]
    background = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 5) % 256], -1).astype(np.uint8)
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(n):
            frame = background.copy()
            cx, cy = int(w / 2 + 200 * np.cos(t / 40)), int(h / 2 + 120 * np.sin(t / 40))
            frame[cy - 30 : cy + 30, cx - 30 : cx + 30] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(clip)) as src, av.open(str(path), "w") as out:
        s_in = src.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        span = None
        for rep in range(minutes):
            src.seek(0)
            packets = [p for p in src.demux(s_in) if p.size]
            if span is None:
                span = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
            for p in packets:
                p.pts, p.dts = p.pts + rep * span, p.dts + rep * span
                p.stream = s_out
                out.mux(p)
    clip.unlink()
    return path


class TreeMemory:
    """Peak resident memory (MiB) of this process plus its descendants, sampled from /proc every ``every`` s."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak_total, self.peak_pss, self.peak_children = every, 0.0, 0.0, 0
        self.peaks: dict[str, float] = {}  # command line -> its peak RSS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parents = {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/stat") as f:
                            parents[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        pass
            tree, grew = {me}, True
            while grew:
                more = {p for p, pp in parents.items() if pp in tree} - tree
                tree |= more
                grew = bool(more)
            rss = [rss_mb(p) for p in tree]
            for p, r in zip(tree, rss):
                try:
                    with open(f"/proc/{p}/cmdline") as f:
                        name = f.read().replace("\0", " ").strip()[:90]
                except OSError:
                    continue
                if name:  # an exited child has none
                    self.peaks[name] = max(self.peaks.get(name, 0.0), r)
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_pss = max(self.peak_pss, sum(_pss_mb(p) for p in tree))
            self.peak_children = max(self.peak_children, len(tree) - 1)
            self._stop.wait(self.every)


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (torch's libraries, mapped by every process) counted once in all."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def throughput(args, settings: TagSettings, tmp: Path) -> None:
    import torch

    from pipeline.features.clip_features import CrossVideoBatcher, encode_clip
    from pipeline.jobs.tag.job import tag
    from pipeline.model.loading import load_model
    from pipeline.model.visual import pool_views

    folder = tmp / "archive"
    paths = sorted(folder.glob("v*.*")) or write_folder(folder, args.videos, args.size, args.seconds, 24,
                                                          args.container)
    shutil.rmtree(tmp / "tags.parquet.index", ignore_errors=True)  # each precision tags afresh
    model = load_model(args.model, torch.device("cpu"), settings.runtime.precision)
    num_frames = model.num_frames(settings.overrides.num_frames)
    cap = 2 * model.preprocess.image_size
    sampling = Sampling("windows", num_frames=num_frames, window_s=settings.window_s,
                        stride_s=settings.stride_s)
    requests = [DecodeRequest(str(p), sampling, "decord", cap) for p in paths]

    t, cpu = time.perf_counter(), time.process_time()  # naive: decord in this process, one model call per video
    for r in requests:
        clip = decode_request(r)
        encode_clip(model, clip, batch_size=10_000)
    naive_s = time.perf_counter() - t
    naive, naive_cores = len(paths) / naive_s, (time.process_time() - cpu) / naive_s  # cores it kept busy

    t = time.perf_counter()
    tag(settings, folder, tmp / "tags.parquet", progress=False)
    ours = len(paths) / (time.perf_counter() - t)
    on_ray = None
    if args.engine == "ray":  # the same job, decoding on the (already started) local Ray cluster
        shutil.rmtree(tmp / "ray.parquet.index", ignore_errors=True)
        t = time.perf_counter()
        tag(dataclasses.replace(settings, engine="ray", encoders=0), folder, tmp / "ray.parquet", progress=False)
        on_ray = len(paths) / (time.perf_counter() - t)
    on_actors = None
    if args.encoders:  # the same again, the frames encoded by Ray actors instead of the driver
        shutil.rmtree(tmp / "actors.parquet.index", ignore_errors=True)
        t = time.perf_counter()
        tag(dataclasses.replace(settings, engine="ray", encoders=args.encoders), folder, tmp / "actors.parquet",
            progress=False)
        on_actors = len(paths) / (time.perf_counter() - t)

    tasks = [settings.task(str(p), model.preprocess) for p in paths]
    t = time.perf_counter()
    chunks = [o.result for _, o in decode_in_workers(tasks, num_workers=args.workers, fn=decode_windows)
              if isinstance(o.result, WindowChunk)]
    decode_only = len(paths) / (time.perf_counter() - t)

    t = time.perf_counter()
    encoder = CrossVideoBatcher(model, settings.runtime.batch_size)
    for k, chunk in enumerate(chunks):
        encoder.add((k, torch.from_numpy(chunk.positions)), torch.from_numpy(chunk.frames).permute(0, 3, 1, 2))
        for (_, positions), feats, _ in encoder.ready():
            pool_views(feats[positions], "mean")
    for (_, positions), feats, _ in encoder.ready(flush=True):
        pool_views(feats[positions], "mean")
    model_only = len(paths) / (time.perf_counter() - t)

    frames = sum(len(c.frames) for c in chunks) / len(paths)
    naive_frames = decode_request(requests[0]).frames.shape[0]
    slower = min(decode_only, model_only)
    cores = len(os.sched_getaffinity(0))
    print(f"\n{args.videos} {args.container} videos of {args.seconds:g} s at {args.size}x{args.size}, 24 fps; "
          f"model {args.model} in {settings.runtime.precision}; "
          f"{len(os.sched_getaffinity(0))} cores; windows {settings.window_s:g} s every {settings.stride_s:g} s, "
          f"{settings.overrides.num_frames} frames each; frames encoded per video: naive {naive_frames}, tag {frames:g}")
    print(f"\n{'row':<44}{'videos/s':>10}")
    for name, rate in (("naive loop (decord + model per video)", naive), ("tag (ours, end to end)", ours),
                       (f"decode only ({args.workers} workers)", decode_only), ("model only (pre-decoded)", model_only)):
        print(f"{name:<44}{rate:10.2f}")
    if on_ray is not None:
        print(f"{'tag --engine ray --encoders 0 (the driver)':<44}{on_ray:10.2f}")
    if on_actors is not None:
        print(f"{f'tag --engine ray --encoders {args.encoders} (actors)':<44}{on_actors:10.2f}")
    print(f"\ntag / naive: {ours / naive:.2f}x (target >= 2x); tag / slower stage: {ours / slower:.0%} (target >= 80 %)")
    if on_ray is not None:
        print(f"tag --engine ray / tag: {on_ray / ours:.2f}x (target >= 0.9x); it adds {1 / on_ray - 1 / ours:+.3f} s "
              f"a video (Ray started beforehand: {args.ray_start_s:.1f} s)")
    if on_actors is not None:
        print(f"tag --engine ray --encoders {args.encoders} / tag: {on_actors / ours:.2f}x (each actor takes a CPU, "
              "or a GPU where the cluster has them)")
    # decode workers and the model share the cores: their CPU seconds per video add up
    shared = cores / (min(args.workers, cores) / decode_only + cores / model_only)
    print(f"tag / shared-core bound ({shared:.2f} videos/s: {min(args.workers, cores)} decode workers' and the "
          f"model's CPU time per video summed over {cores} cores): {ours / shared:.0%}")
    print(f"the naive loop kept {naive_cores:.2f} of {cores} cores busy: doing the same work per video, no schedule "
          f"can beat it by more than {cores / naive_cores:.2f}x here ({naive_frames / frames:.2f}x fewer frames to "
          f"encode is what tag saves beyond that)")


def keyframe_mode(args, settings: TagSettings, tmp: Path) -> None:
    """Exact against keyframe sampling on an archive with a keyframe a second: tag's rates and the cosine between
    the two runs' video embeddings."""
    from pipeline.jobs.tag.index import open_indexes
    from pipeline.jobs.tag.job import tag

    folder = tmp / "keyed"
    for i in range(args.videos):
        frames = moving_square_frames(list(DIRECTIONS)[i % len(DIRECTIONS)], "red", size=args.size,
                                      num_frames=int(args.seconds * 24), square=args.size // 5, seed=i)
        write_video(folder / f"v{i:03d}.mp4", frames, fps=24, options={"crf": "18", "g": "24", "x264-params": "mbtree=0"})
    rates, vectors = {}, {}
    for sampling in ("exact", "keyframes"):
        out = tmp / f"keyed_{sampling}.parquet"
        t = time.perf_counter()
        tag(dataclasses.replace(settings, sampling=sampling), folder, out, progress=False)
        rates[sampling] = args.videos / (time.perf_counter() - t)
        [index] = open_indexes(Path(f"{out}.index"))
        table = index.table("embeddings").to_table(columns=["path", "kind", "vector"], filter="kind = 'video'")
        vectors[sampling] = {p: np.asarray(v, dtype=np.float64) for p, v in zip(table["path"].to_pylist(),
                                                                                 table["vector"].to_pylist())}
    cos = [float(a @ vectors["keyframes"][p] / np.linalg.norm(a) / np.linalg.norm(vectors["keyframes"][p]))
           for p, a in vectors["exact"].items()]
    print(f"\nkeyframe sampling, {args.videos} MP4s of {args.seconds:g} s with a keyframe every second, "
          f"{settings.runtime.precision}: tag {rates['exact']:.2f} videos/s exact, {rates['keyframes']:.2f} keyframes; "
          f"keyframes / exact: {rates['keyframes'] / rates['exact']:.2f}x (target >= 4x); cosine of video embeddings "
          f"to exact: mean {np.mean(cos):.6f}, min {np.min(cos):.6f} ({len(cos)} videos)")


def memory(args, settings: TagSettings, tmp: Path) -> None:
    from pipeline.jobs.tag.job import tag

    folder = tmp / "long"
    folder.mkdir()
    t = time.perf_counter()
    video = write_long_video(folder / "long.mp4", args.long_minutes)
    made = time.perf_counter() - t
    t = time.perf_counter()
    with TreeMemory() as mem:
        summary = tag(settings, folder, tmp / "long.parquet", progress=False)
    took = time.perf_counter() - t
    import pandas as pd

    rows = pd.read_parquet(tmp / "long.segments.parquet")
    windows = int((rows["kind"] == "window").sum())
    whole = windows * settings.overrides.num_frames * 360 * 640 * 3 / 2**20
    print(f"\none {args.long_minutes}-minute 640x360 24 fps video ({video.stat().st_size / 2**20:.0f} MiB, written in "
          f"{made:.0f} s): {summary.ok} tagged in {took:.0f} s, {windows} windows")
    print(f"peak RSS, this process + {mem.peak_children} child processes: {mem.peak_total:.0f} MiB (target < 2048); "
          f"largest single process {max(mem.peaks.values()):.0f} MiB; PSS (shared pages counted once) "
          f"{mem.peak_pss:.0f} MiB")
    for name, peak in mem.peaks.items():
        print(f"   {peak:6.0f} MiB  {name}")
    print(f"(the windows' frames decoded at once would take {whole:.0f} MiB; chunks hold <= {settings.chunk_mb:g} MiB)")


def split(args, settings: TagSettings, tmp: Path) -> None:
    """One long video, one decode worker against ``--workers`` time ranges: decode only, then tag end to end; and
    what the measured costs predict for more cores (a range's worker reopens the file: one demux pass each)."""
    import torch

    from pipeline.features.window_decode import range_tasks
    from pipeline.jobs.tag.job import tag
    from pipeline.model.loading import load_model
    from pipeline.video.open import open_video

    folder = tmp / "split"
    folder.mkdir()
    video = write_long_video(folder / "long.mp4", args.split_minutes)
    t, used = time.perf_counter(), time.process_time()
    with open_video(video) as reader:  # what each range's worker repeats before it decodes: open and demux
        reader.timestamps  # noqa: B018
    open_s, open_cpu = time.perf_counter() - t, time.process_time() - used
    model = load_model(args.model, torch.device("cpu"))
    seconds, cpu = {}, {}
    for workers in (1, args.workers):
        task = dataclasses.replace(settings, runtime=dataclasses.replace(settings.runtime, decode_workers=workers)
                                   ).resolved(model).task(str(video), model.preprocess)
        t, windows, ranges, used = time.perf_counter(), 0, 0, _cpu_seconds()
        decoders = DecodeWorkers(decode_windows, num_workers=workers, timeout_s=600)
        with decoders.pool:
            for t_, o in decoders.run([task]):
                if isinstance(o.result, WindowHeader):  # a whole video's header names its other time ranges
                    decoders.submit_next(range_tasks(t_, o.result))
                windows += len(o.result.positions) if isinstance(o.result, WindowChunk) else 0
                ranges += o.status == "ok"
        seconds[workers], cpu[workers] = time.perf_counter() - t, _cpu_seconds() - used
        print(f"decode only, {workers} worker(s): {seconds[workers]:.1f} s for {windows} windows in {ranges} "
              f"range(s); {cpu[workers]:.1f} CPU s in all ({cpu[workers] / seconds[workers]:.2f} cores busy)")
    cores = len(os.sched_getaffinity(0))
    one, many = seconds[1], seconds[args.workers]
    decode = one - open_s  # the wall time that divides between ranges

    def predicted(n: int, c: int) -> float:
        """Wall time with n ranges on c cores: each range's open, then its share of the decoding; or, if longer, the
        CPU work spread over the cores: that of the split run (on saturated cores, so without the idle spinning of
        FFmpeg's frame threads) plus an open for each further range."""
        return max(open_s + decode / n, (cpu[args.workers] + (n - args.workers) * open_cpu) / c)

    print(f"\none {args.split_minutes}-minute 640x360 video, {cores} cores: {args.workers} ranges decode "
          f"{one / many:.2f}x as fast as one worker; the model (open {open_s:.2f} s, then decode {decode:.1f} s / n, "
          f"unless {cpu[args.workers]:.1f} CPU s plus {open_cpu:.2f} per further range fill the cores) predicts "
          f"{one / predicted(args.workers, cores):.2f}x here")
    for n in (4, 8, 16):
        print(f"   predicted with {n} workers on {n} cores: {one / predicted(n, n):.1f}x")
    for workers in (1, args.workers):
        runtime = dataclasses.replace(settings.runtime, decode_workers=workers)
        t = time.perf_counter()
        tag(dataclasses.replace(settings, runtime=runtime), folder, tmp / f"split{workers}.parquet", progress=False)
        seconds[workers] = time.perf_counter() - t
    print(f"tag end to end ({args.model}): {seconds[1]:.1f} s with 1 decode worker, {seconds[args.workers]:.1f} s "
          f"with {args.workers}: {seconds[1] / seconds[args.workers]:.2f}x")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its ended child processes (a pool's workers once closed)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    import torch

    from pipeline.jobs.tag.job import TagSettings
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--model", default="random:tiny-vit", help="e.g. random:ViT-B/32 for a model-bound run")
    ap.add_argument("--size", type=int, default=224, help="frame side of the generated videos")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--long-minutes", type=int, default=60, help="length of the memory run's video (0: skip it)")
    ap.add_argument("--split-minutes", type=int, default=10,
                    help="length of the video decoded by one worker and by --workers time ranges (0: skip it)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--precisions", default="fp32,bf16", help="the throughput rows are run once per precision")
    ap.add_argument("--container", choices=("mp4", "avi"), default="mp4")
    ap.add_argument("--keyframes", action="store_true", help="also compare --sampling keyframes with exact tag")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="ray: also time tag --engine ray on a local Ray cluster (run this script under "
                         "unshare -n with lo up, so that Ray can listen on loopback only)")
    ap.add_argument("--encoders", type=int, default=0, help="--engine ray: also time the frames encoded by this many "
                    "Ray actors (one GPU each where the cluster has them)")
    args = ap.parse_args()
    args.ray_start_s = 0.0
    if args.engine == "ray":
        from pipeline.video.ray_pool import connect

        t = time.perf_counter()
        connect(num_cpus=len(os.sched_getaffinity(0)))
        args.ray_start_s = time.perf_counter() - t
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    settings = TagSettings(RuntimeSettings(args.model, device="cpu", decode_workers=args.workers), tuple(DIRECTIONS),
                           overrides=ProtocolOverrides(templates="none", num_frames=8), window_s=4.0, stride_s=2.0, commit_every=16)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_throughput:
            for precision in args.precisions.split(","):
                runtime = dataclasses.replace(settings.runtime, precision=precision)
                throughput(args, dataclasses.replace(settings, runtime=runtime), Path(tmp))
        if args.keyframes:
            keyframe_mode(args, settings, Path(tmp))
        if args.split_minutes:
            split(args, settings, Path(tmp))
        if args.long_minutes:
            memory(args, settings, Path(tmp))


if __name__ == "__main__":
    main()
