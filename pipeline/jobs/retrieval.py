"""The retrieval protocol of ``benchmark`` (``protocol: retrieval``): text -> video and video -> text on captioned
videos (MSR-VTT, DiDeMo, ActivityNet Captions, a ``path,caption`` CSV), with CLIP4Clip's metrics
(``pipeline.eval.retrieval``).

Each video is sampled, embedded and pooled by its model's own protocol (frames, pooling, views averaged), with the
same per-video feature cache as the classification protocols; captions are embedded as written (templates do not
apply). A pair's score is its family's: the cosine of the video's and the caption's embeddings, or for X-CLIP the
cosine to the caption as its prompt generator conditions it on that video; SigLIP's sigmoid is monotone in the
cosine, so it ranks alike.

Every run is scored twice: exactly (every video against every caption) and, text -> video, through the IVF-PQ index
``search`` uses on a tag index (``tag.table_indexes.create_vector_index``, probed and re-ranked as
``TagIndex.nearest`` does; X-CLIP's candidates re-ranked by the conditioned score as ``search`` does), built over
these videos' vectors whatever their number, so the report shows what the index costs in recall. The index returns
``INDEX_HITS`` videos a query: a match beyond them has no rank (MnR is not defined there).
"""
from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from clip_model.errors import UserError
from configs.schema import BenchmarkConfig, as_written
from datasets.captions import read_activitynet, read_captions, read_didemo, read_msrvtt
from datasets.records import CaptionDataset
from pipeline.eval.metrics import mean_std
from pipeline.eval.retrieval import (
    group_scores,
    recall_curve,
    retrieval_metrics,
    text_to_video_ranks,
    video_to_text_ranks,
)
from pipeline.model.families import WINDOW_POOLINGS
from pipeline.model.scorers import VideoState
from pipeline.model.video_text import VideoTextModel
from pipeline.video.native_log import captured_stderr

from .benchmark_features import ERROR_COLUMNS, check_found, failure_rows, load_benchmark_model, video_features
from .benchmark_report import plot_png, write_reports
from .tag.index import NPROBES, REFINE
from .tag.query import RERANK
from .tag.table_indexes import create_vector_index

INDEX_HITS = 100  # videos the index returns a query (X-CLIP: RERANK x as many candidates, re-ranked)
WORST_SHOWN = 10  # worst-ranked queries the report lists with their top hits
QUERY_COLUMNS = ["direction", "query", "target", "rank", "index_rank", "top5"]  # predictions.csv: a row per query


def load_captions(cfg: BenchmarkConfig) -> CaptionDataset:
    d = cfg.dataset
    if d.annotations is None:
        raise UserError(f"dataset.annotations is required for format {d.format}")
    if d.format == "msrvtt":
        ds = read_msrvtt(d.root, d.annotations, d.captions_json)
    elif d.format == "didemo":
        ds = read_didemo(d.root, d.annotations, d.video_list)
    elif d.format == "activitynet":
        ds = read_activitynet(d.root, d.annotations)
    else:
        ds = read_captions(d.root, d.annotations)
    check_found(ds.name, ds.missing, len(ds.videos), d.root, d.skip_missing)
    return ds


@dataclass(frozen=True)
class Scored:
    """The videos that decoded, their captions, and every pair's score."""

    dataset: CaptionDataset
    vectors: np.ndarray  # (V, E) float32 unit video vectors, as a tag index stores them
    queries: np.ndarray  # (T, E) float32 unit caption vectors, as search embeds a text
    sim: np.ndarray  # (V, T) float32: the family's score of video v for caption t
    conditioned: bool  # X-CLIP: sim is the conditioned cosine, which the index's vectors only approximate

    @property
    def owners(self) -> np.ndarray:
        return np.asarray(self.dataset.caption_video)


def score(model: VideoTextModel, ds: CaptionDataset, features: dict[Path, torch.Tensor], cache_root: Path,
          mkey: str) -> Scored:
    """Captions against the videos whose (views, L, E) ``features`` are given; a video's state is its views'
    renormalised mean."""
    ds = ds.keep({r.label for r in ds.videos if r.path in features})
    state = VideoState.cat([model.state(features[r.path]).mean() for r in ds.videos])  # (V, ...)
    text = model.class_text(list(ds.captions), ["{}"], cache_root, mkey)  # (T, E), or (1, T, E) per template
    sim = model.labels(text).cosines(state).numpy()  # (V, T)
    queries = F.normalize(text if text.ndim == 2 else text.mean(dim=0), dim=-1).numpy()  # (T, E)
    return Scored(ds, state.vectors.numpy().astype(np.float32), queries.astype(np.float32), sim,
                  model.reranks_search)


def index_ranks(scored: Scored, folder: Path, hits: int = INDEX_HITS) -> tuple[np.ndarray, float]:
    """(T,) text -> video ranks through search's IVF-PQ index over the videos' vectors (``inf`` where a caption's
    video is not among its ``hits`` returned videos), and the index's recall@10: the percent of each caption's exact
    top 10 videos that its top 10 hits hold, averaged (what R@K can lose to the index)."""
    v, dim = scored.vectors.shape
    table = pa.table({"video": pa.array(np.arange(v), pa.int64()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(scored.vectors.ravel()), dim)})
    ds = lance.write_dataset(table, str(folder / "videos.lance"))
    with captured_stderr():  # Lance's Rust log notes that a small table trains fewer partitions than asked
        create_vector_index(ds, v, dim)
    k = min(v, hits)
    ranks, found_share = np.full(len(scored.queries), np.inf), []
    top = min(v, 10)
    exact_top = np.argsort(-scored.sim, axis=0, kind="stable")[:top].T  # (T, top)
    for t, (query, own) in enumerate(zip(scored.queries, scored.owners)):
        found = ds.to_table(columns=["video", "_distance"], nearest={
            "column": "vector", "q": query, "k": min(v, k * RERANK) if scored.conditioned else k, "metric": "cosine",
            "nprobes": NPROBES, "refine_factor": REFINE})
        videos = np.asarray(found["video"].to_numpy())
        scores = scored.sim[videos, t] if scored.conditioned else 1.0 - found["_distance"].to_numpy()
        order = np.argsort(-scores, kind="stable")[:k]
        videos, scores = videos[order], scores[order]
        if own in videos:
            ranks[t] = 1 + int((scores > scores[videos == own][0]).sum())
        found_share.append(len(set(videos[:top].tolist()) & set(exact_top[t].tolist())) / top)
    return ranks, float(100 * np.mean(found_share))


def run_retrieval(cfg: BenchmarkConfig) -> dict:
    """The retrieval protocol: results.json, predictions.csv (a row per query: its rank, the index's, its top
    hits), errors.csv and report.html in ``cfg.out``; returns the results dict."""
    ds = load_captions(cfg)
    cfg.overrides.check_pooling(WINDOW_POOLINGS, "retrieval")  # one vector per video
    setup = load_benchmark_model(cfg)
    features, errors = video_features(ds.videos, setup.model, setup.sampling, cfg, setup.cache, f"{ds.name} videos")
    if not features:
        raise UserError(f"{ds.name}: no video decoded ({len(errors)} failed; errors in the log above)")
    scored = score(setup.model, ds, features, setup.cache_root, setup.key)
    t2v = text_to_video_ranks(scored.sim, scored.owners)
    v2t = video_to_text_ranks(scored.sim, scored.owners)
    with tempfile.TemporaryDirectory() as folder:
        indexed, index_recall = index_ranks(scored, Path(folder))
    metrics = (retrieval_metrics(t2v).summary("t2v_") | retrieval_metrics(v2t).summary("v2t_")
               | retrieval_metrics(indexed).summary("index_t2v_") | {"index_recall@10": index_recall})
    kept = scored.dataset
    split = {"name": ds.name, "metrics": metrics, "videos": len(kept.videos), "captions": len(kept.captions),
             "skipped_missing": len(ds.missing), "failed": len(errors), "index_hits": min(len(kept.videos), INDEX_HITS)}
    summary = {k: mean_std([v]) for k, v in metrics.items() if isinstance(v, float)}
    results = {"name": cfg.name, "config": as_written(cfg), "splits": [split], "summary": summary,
               "headline": {"metric": cfg.headline, **summary[cfg.headline]}}
    rows = _query_rows(scored, t2v, v2t, indexed)
    errors_table = pd.DataFrame(failure_rows(ds.name, errors, ds.missing), columns=ERROR_COLUMNS)
    queries = pd.DataFrame(rows, columns=QUERY_COLUMNS).astype({"index_rank": "Int64"})  # blank: not found
    write_reports(cfg.out, results, queries, errors_table,
                  [("rank of the match (exact)", _rank_histogram(t2v, v2t)),
                   ("R@K: the share of queries whose match is in the top K", _recall_png(t2v, v2t, indexed))],
                  [("The worst-ranked captions (text -> video, exact) and their top hits", _worst_table(rows))])
    return results


def split_line(split: dict) -> str:
    """One line of a split's figures, as ``benchmark`` prints them."""
    m = split["metrics"]
    return f"{split['name']}: " + "  ".join(
        f"{d} R@1 {m[f'{p}R@1']:.1f} R@5 {m[f'{p}R@5']:.1f} R@10 {m[f'{p}R@10']:.1f} MdR {m[f'{p}MdR']}"
        for d, p in (("text->video", "t2v_"), ("video->text", "v2t_"), ("index text->video", "index_t2v_"))) \
        + f"  ({split['videos']} videos, {split['captions']} captions, {split['failed']} failed)"


def _query_rows(scored: Scored, t2v: np.ndarray, v2t: np.ndarray, indexed: np.ndarray) -> list[dict]:
    ds = scored.dataset
    paths = [str(r.path) for r in ds.videos]
    first = {v: ds.captions[t] for t, v in reversed(list(enumerate(ds.caption_video)))}  # a group's first caption
    top_videos = np.argsort(-scored.sim, axis=0, kind="stable")[:5].T  # (T, 5)
    top_groups = np.argsort(-group_scores(scored.sim, scored.owners), axis=1, kind="stable")[:, :5]  # (V, 5)
    rows = [{"direction": "t2v", "query": c, "target": paths[v], "rank": int(t2v[t]),
             "index_rank": None if np.isinf(indexed[t]) else int(indexed[t]),
             "top5": "|".join(paths[int(i)] for i in top_videos[t])}
            for t, (c, v) in enumerate(zip(ds.captions, ds.caption_video))]
    rows += [{"direction": "v2t", "query": paths[v], "target": first[v], "rank": int(v2t[v]), "index_rank": None,
              "top5": "|".join(first[int(g)] for g in top_groups[v])} for v in range(len(paths))]
    return rows


def _rank_histogram(t2v: np.ndarray, v2t: np.ndarray) -> str:
    def draw(ax) -> None:
        bins = np.unique(np.geomspace(1, max(int(t2v.max()), int(v2t.max()), 2) + 1, 30).astype(int))
        ax.hist([t2v, v2t], bins=bins, label=["text -> video", "video -> text"], color=["#4477aa", "#cc6677"])
        ax.set(xscale="log", xlabel="rank of the match (log)", ylabel="queries")
        ax.legend()

    return plot_png((6.5, 3.2), draw)


def _recall_png(t2v: np.ndarray, v2t: np.ndarray, indexed: np.ndarray) -> str:
    def draw(ax) -> None:
        ks = np.unique(np.geomspace(1, max(len(v2t), 2), 60).astype(int))
        for ranks, label, style in ((t2v, "text -> video, exact", "-"), (indexed, "text -> video, index", "--"),
                                    (v2t, "video -> text, exact", "-")):
            ax.plot(ks, recall_curve(ranks, ks), style, label=label)
        ax.set(xscale="log", xlabel="K", ylabel="R@K (%)", ylim=(0, 100))
        ax.legend()

    return plot_png((6.5, 3.2), draw)


def _worst_table(rows: list[dict]) -> str:
    worst = sorted((r for r in rows if r["direction"] == "t2v"), key=lambda r: -r["rank"])[:WORST_SHOWN]
    body = "".join(f"<tr><td>{html.escape(r['query'])}</td><td>{html.escape(Path(r['target']).name)}</td>"
                   f"<td>{r['rank']}</td><td>{html.escape(', '.join(Path(p).name for p in r['top5'].split('|')[:3]))}"
                   "</td></tr>" for r in worst)
    return f"<table><tr><th>caption</th><th>its video</th><th>rank</th><th>top 3 hits</th></tr>{body}</table>"
