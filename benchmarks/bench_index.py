"""Archive scale without a model: build a tag index of N videos through the code path tag commits with, then time
commits, resume, search (exact and approximate, with recall@10 against exact), verify (every file's SHA-256) and
retag, with peak memory.

    python benchmarks/bench_index.py --videos 100000 --windows-per-video 10 --dim 512 --out /tmp/bench_index

Rows are shaped like tag's: per video one row in ``videos`` and 1 + W rows in ``embeddings`` (the video and its
windows), committed 32 videos at a time by ``Part`` and ``TagIndex.commit``, with tag-time labels from a
``TopLabels``. Embeddings are random unit vectors drawn around a few thousand cluster centres (real embedding sets are
clustered; windows of one video lie near each other); ``--uniform`` draws them uniformly on the sphere instead, the
worst case for an approximate index. The settings name ``random:ViT-B/32`` as the model, so
``run_pipeline.py search OUT/tags.index "text"`` works on the result. Empty files stand in for the videos, so a
resume over the finished archive runs tag's own resume path (listing, stat, lookup) and must re-tag nothing.
Search, retag and resume each run in a fresh process, whose peak RSS is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.features.windows import WindowedVideo
from pipeline.jobs.tag.discover import discover
from pipeline.jobs.tag.index import TagIndex, open_indexes
from pipeline.jobs.tag.job import Part, TagSettings, next_video_id, open_for_tagging, resume_plan
from pipeline.jobs.tag.outputs import TopLabels
from pipeline.jobs.tag.query import SearchFilter, nearest
from pipeline.jobs.tag.table_indexes import ANN_MIN_ROWS, build_lookup_indexes, build_vector_index
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
from pipeline.model.scorers import ProbabilityRule, VideoState
from pipeline.model.video_text import LabelScorer
from pipeline.video.reader import VideoInfo

MODEL = "random:ViT-B/32"
LABELS = tuple(f"action {i}" for i in range(20))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the parent
    through fork and exec, so a child started by the (large) build process would report the build's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start this process's VmHWM over from its current resident set (Linux: 5 > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Embeddings:
    """Per video (W, D) window embeddings: around one of ``centres`` cluster centres (noise 0.6 / sqrt(D) per
    dimension per window around a per-video point), or uniform on the sphere."""

    def __init__(self, dim: int, windows: int, centres: int, uniform: bool, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.dim, self.windows, self.uniform = dim, windows, uniform
        self.centres = unit(self.rng.standard_normal((centres, dim)).astype(np.float32))

    def video(self) -> np.ndarray:
        if self.uniform:
            return unit(self.rng.standard_normal((self.windows, self.dim)).astype(np.float32))
        point = unit(self.centres[self.rng.integers(len(self.centres))]
                     + self.rng.standard_normal(self.dim).astype(np.float32) * (0.5 / np.sqrt(self.dim)))
        return unit(point + self.rng.standard_normal((self.windows, self.dim)).astype(np.float32)
                    * (0.6 / np.sqrt(self.dim)))


def settings(windows: int) -> TagSettings:
    return TagSettings(RuntimeSettings(MODEL, device="cpu"), LABELS,
                       overrides=ProtocolOverrides(templates="none", num_frames=8, pooling="mean"), window_s=4.0, stride_s=2.0,
                       commit_every=32)


def build(args: argparse.Namespace) -> dict:
    """Write the archive's stand-in files and its index; returns the commit timings."""
    out, archive = Path(args.out), Path(args.out) / "archive"
    if out.exists():
        shutil.rmtree(out)
    archive.mkdir(parents=True)
    paths = []
    for i in range(args.videos):
        folder = archive / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir()
        path = folder / f"clip_{i:08d}.mp4"
        path.touch()
        paths.append(path)
    cfg = settings(args.windows_per_video)
    index = open_for_tagging(out / "tags.index", cfg.identity(), args.dim)
    text = torch.from_numpy(unit(np.random.default_rng(1).standard_normal((len(LABELS), args.dim))
                                 .astype(np.float32)))
    part = Part(TopLabels(LabelScorer(text, ProbabilityRule("softmax", 100.0)), LABELS, cfg.topk), args.dim)
    source = Embeddings(args.dim, args.windows_per_video, args.centres, args.uniform)
    bounds = tuple((2.0 * k, 2.0 * k + 4.0) for k in range(args.windows_per_video))
    duration = bounds[-1][1]
    times, start = [], time.perf_counter()
    for i, path in enumerate(paths):
        info = VideoInfo(path, "pyav", 25 * int(duration), 25.0, 360, 640, duration=duration)
        video = WindowedVideo(info, bounds, VideoState(torch.from_numpy(source.video())))
        st = path.stat()
        part.add_video(next_video_id(index, part), str(path.resolve()), (st.st_size, st.st_mtime_ns),
                       video)
        if len(part) == cfg.commit_every or i == len(paths) - 1:
            t = time.perf_counter()
            index.commit(*part.tables())
            times.append(time.perf_counter() - t)
            part.clear()
            if len(times) % 500 == 0:
                print(f"  {i + 1:,} videos, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    t = time.perf_counter()
    built = build_vector_index(index, force=index.count("embeddings") >= ANN_MIN_ROWS)
    ann_build = time.perf_counter() - t
    t = time.perf_counter()
    build_lookup_indexes(index)  # as tag ends: serve finds a video's rows through them
    lookup_build = time.perf_counter() - t
    index.close()
    n = max(1, len(times) // 20)
    return {"videos": args.videos, "embedding_rows": index.count("embeddings"), "commits": len(times),
            "first_commits_ms": round(1000 * float(np.median(times[:n])), 2),
            "last_commits_ms": round(1000 * float(np.median(times[-n:])), 2),
            "build_s": round(total, 1), "ann_index": built, "ann_build_s": round(ann_build, 1),
            "lookup_build_s": round(lookup_build, 1),
            "index_mb": round(sum(f.stat().st_size for f in (out / "tags.index").rglob("*") if f.is_file()) / 2**20),
            "build_peak_rss_mb": round(peak_rss_mb())}


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process: resume, search or retag."""
    out = Path(args.out)
    if args.child == "resume":
        t = time.perf_counter()
        paths, errors = discover(out / "archive")
        listed = time.perf_counter() - t
        index = open_for_tagging(out / "tags.index", settings(args.windows_per_video).identity(), args.dim)
        todo, _ = resume_plan(index, paths, errors)
        index.close()
        return {"resume_s": round(time.perf_counter() - t, 1), "listing_s": round(listed, 1), "to_tag": len(todo),
                "resume_peak_rss_mb": round(peak_rss_mb())}
    if args.child == "retag":
        import pipeline.jobs.tag.query as query

        streamed = []  # seconds in write_outputs: the streaming part, after the model and label embeddings
        stream_peak = []
        write_outputs = query.write_outputs

        def timed(*a, **kw):
            reset_peak_rss()  # the streaming part's own peak, apart from loading the model
            stream_peak.append(peak_rss_mb())  # where it starts: the resident set left after the model is freed
            t = time.perf_counter()
            write_outputs(*a, **kw)
            streamed.append(time.perf_counter() - t)
            stream_peak.append(peak_rss_mb())

        query.write_outputs = timed  # retag's own call, timed
        labels = [f"label {i}" for i in range(400)]
        t = time.perf_counter()
        query.retag(out / "tags.index", labels, out / "retag.parquet", templates="none", device="cpu")
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        rows = sum(b.num_rows for index in open_indexes(out / "tags.index")
                   for b in index.scan("embeddings", ["vector"]))
        read = time.perf_counter() - t
        return {"retag_s": round(seconds, 1), "retag_stream_s": round(streamed[0], 1),
                "retag_rows_per_s": round(rows / streamed[0]),
                "read_vectors_rows_per_s": round(rows / read), "retag_peak_rss_mb": round(peak_rss_mb()),
                "retag_stream_start_rss_mb": round(stream_peak[0]), "retag_stream_peak_rss_mb": round(stream_peak[1])}
    if args.child == "verify":
        from pipeline.jobs.tag.maintenance import verify_index

        t = time.perf_counter()
        report = verify_index(out / "tags.index")
        seconds = time.perf_counter() - t
        assert report.ok, report.line()
        return {"verify_s": round(seconds, 1), "verify_files": report.files, "verify_gb": round(report.bytes / 1e9, 2),
                "verify_gb_per_s": round(report.bytes / 1e9 / seconds, 2), "verify_peak_rss_mb": round(peak_rss_mb())}
    return search_child(args)


def search_child(args: argparse.Namespace) -> dict:
    """Latency of the search the CLI runs (median of 20 queries after one warm-up) and recall@10 against exact."""
    indexes = open_indexes(Path(args.out) / "tags.index")
    rng = np.random.default_rng(7)
    source = Embeddings(args.dim, 1, args.centres, args.uniform, seed=0)  # the same centres as the build
    queries = [source.video()[0] if not args.uniform else unit(rng.standard_normal(args.dim).astype(np.float32))
               for _ in range(21)]
    nearest(indexes, queries[0], 10)
    lat, results = [], []
    for q in queries[1:]:
        t = time.perf_counter()
        results.append(nearest(indexes, q, 10))
        lat.append(time.perf_counter() - t)
    report = {"search_ms_median": round(1000 * float(np.median(lat)), 1), "approximate": indexes[0].has_vector_index(),
              "search_peak_rss_mb": round(peak_rss_mb())}
    t = time.perf_counter()
    filtered = nearest(indexes, queries[1], 10, SearchFilter(path_glob="*/d0001/*", after_s=4.0))
    report["filtered_search_ms"] = round(1000 * (time.perf_counter() - t), 1)
    report["filtered_hits_ok"] = all("/d0001/" in h["path"] and h["end_s"] >= 4.0 for h in filtered)
    if indexes[0].has_vector_index():  # recall@10 of the approximate answers against an exact scan
        exact = exact_top(indexes, np.stack(queries[1:]), 10)
        recall = [len({(h["video_id"], h["start_s"], h["kind"]) for h in got} & want) / 10
                  for got, want in zip(results, exact)]
        report["recall_at_10"] = round(float(np.mean(recall)), 3)
    return report


def exact_top(indexes: list[TagIndex], queries: np.ndarray, k: int) -> list[set[tuple]]:
    """The exact top-k of each (Q, D) query by streaming every vector once (no index): the reference for recall."""
    best: list[list[tuple[float, tuple]]] = [[] for _ in queries]
    for index in indexes:
        for batch in index.scan("embeddings", ["video_id", "kind", "start_s", "vector"]):
            v = batch.column("vector").values.to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
            scores = v.astype(np.float32) @ queries.T  # (n, Q)
            ids, kinds, starts = (batch.column(c).to_pylist() for c in ("video_id", "kind", "start_s"))
            for q in range(len(queries)):
                top = np.argsort(-scores[:, q])[:k]
                best[q] = sorted(best[q] + [(float(scores[i, q]), (ids[i], starts[i], kinds[i])) for i in top],
                                 key=lambda x: -x[0])[:k]
    return [{key for _, key in b} for b in best]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--windows-per-video", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=4000, help="cluster centres of the embeddings")
    p.add_argument("--uniform", action="store_true", help="uniform random unit vectors instead of clusters")
    p.add_argument("--out", required=True, help="folder for the archive stand-ins and tags.index (replaced)")
    p.add_argument("--child", choices=("resume", "search", "retag", "verify"), help=argparse.SUPPRESS)
    p.add_argument("--skip-retag", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    torch.set_grad_enabled(False)
    report = build(args)
    print(json.dumps(report), flush=True)
    for what in ("resume", "search", "verify", *(() if args.skip_retag else ("retag",))):
        cmd = [sys.executable, __file__, "--child", what, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        if done.returncode:
            raise SystemExit(f"{what} failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        report |= result
        print(json.dumps(result), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
