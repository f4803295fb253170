"""The demo job: the whole pipeline, from nothing, in minutes on a 2-core CPU (the README gives the measured time).

1. Write the synthetic action world (``datasets.world``): H.264 videos, captions and annotation CSVs.
2. Train a tiny CLIP from scratch whose frames are pooled by the learned temporal transformer.
3. Evaluate zero-shot on the held-out (object, action) pairs, which no training clip shows, through ``benchmark``:
   with the temporal pooler, and with mean pooling of the same frame embeddings (the pooler's skip path alone: what
   order-blind pooling of these embeddings gives). Fit a linear probe on the temporal embeddings of the training
   videos. Retrieve a clip of each held-out pair by its caption (the retrieval protocol), with both poolings.
4. Classify a few held-out files through ``classify``; tag all of them through ``tag`` and search them by text.
5. Write ``report.html`` (loss curves, confusion matrices, example frames with predicted and true labels, the
   direction table) and ``results.json``.

Rerunning on the same folder reuses finished work (the world's files and trained checkpoints).
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import sys
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from configs.schema import BenchmarkConfig, DatasetConfig, TrainConfig
from datasets.world import TIME_REVERSED_PAIRS, WorldConfig, write_world
from pipeline.eval.metrics import compute_metrics
from pipeline.jobs.tag.index_state import index_folder
from pipeline.jobs.tag.job import TagSettings, tag
from pipeline.jobs.tag.query import search
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
from pipeline.video.open import open_video
from pipeline.video.samplers import segment_indices

from .benchmark import run_benchmark
from .benchmark_report import _figure_png, confusion_png
from .classify import ClassifySettings, classify_videos
from .train import train

POOLINGS: tuple[Literal["mean", "temporal"], ...] = ("mean", "temporal")


@dataclass(frozen=True)
class DemoSettings:
    world: WorldConfig = field(default_factory=WorldConfig)
    steps: int = 1500
    batch_size: int = 60
    lr: float = 2e-3
    seed: int = 0
    classify_files: int = 10  # held-out files sent through classify (one per action while they last)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _train_cfg(s: DemoSettings, out: Path, pooling: Literal["mean", "temporal"]) -> TrainConfig:
    return TrainConfig(name=f"demo_{pooling}", world=s.world, pooling=pooling, steps=s.steps,
                       batch_size=s.batch_size, lr=s.lr, warmup_steps=min(40, s.steps // 10), seed=s.seed,
                       checkpoint_every=max(1, s.steps // 4), device="cpu", output_dir=str(out / f"train_{pooling}"))


def _bench_cfg(out: Path, files: dict[str, Path], name: str, model: Path, pooling: Literal["mean", "temporal"],
               protocol: Literal["zero_shot", "linear_probe"] = "zero_shot") -> BenchmarkConfig:
    dataset = DatasetConfig(format="csv", root=str(files["heldout"].parent), annotations=str(files["heldout"]),
                            train_annotations=str(files["train"]), classes=str(files["actions"]))
    return BenchmarkConfig(name=name, dataset=dataset, protocol=protocol,
                           runtime=RuntimeSettings(str(model), device="cpu", decode_workers=2),
                           overrides=ProtocolOverrides(str(files["templates"]), num_frames=8, pooling=pooling),
                           output_dir=str(out / name), cache_dir=str(out / "cache"))


def _retrieval_cfg(out: Path, files: dict[str, Path], captions: Path, model: Path,
                   pooling: Literal["mean", "temporal"]) -> BenchmarkConfig:
    dataset = DatasetConfig(format="captions", root=str(files["heldout"].parent), annotations=str(captions))
    return BenchmarkConfig(name=f"retrieval_{pooling}", dataset=dataset, protocol="retrieval",
                           runtime=RuntimeSettings(str(model), device="cpu", decode_workers=2),
                           overrides=ProtocolOverrides(num_frames=8, pooling=pooling),
                           output_dir=str(out / f"retrieval_{pooling}"), cache_dir=str(out / "cache"))


def retrieval_captions(heldout_captions: Path, out: Path) -> Path:
    """A captions CSV (path,caption) of the first held-out clip of each (object, action) pair: a pair's clips share
    their caption, so one clip each leaves every caption a single right answer."""
    with open(heldout_captions, newline="") as f:
        rows = list(csv.DictReader(f))
    first = {(r["colour"], r["shape"], r["action"]): r for r in reversed(rows)}
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows((r["path"], r["caption"]) for r in rows if first[(r["colour"], r["shape"], r["action"])] is r)
    return out


def _predictions(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["label"] for r in rows], [r["prediction"] for r in rows]


def direction_pairs(labels: list[str], predictions: list[str]) -> dict[str, float]:
    """For each time-reversed pair (a, b): among clips of a or b predicted as a or b, the share given the right one.
    0.5 is a coin toss: what pooling that ignores frame order can at best do."""
    result = {}
    for a, b in TIME_REVERSED_PAIRS:
        hits = [y == p for y, p in zip(labels, predictions) if y in (a, b) and p in (a, b)]
        if hits:
            result[f"{a} / {b}"] = float(np.mean(hits))
    return result


def reversal_cosines(path: Path, video: Path) -> dict[str, float]:
    """Cosine between the embedding of a clip and of the same clip played backwards, per pooling: exactly 1 for the
    mean (order is invisible to it), below 1 for the temporal head."""
    import clip_model

    with open_video(video) as reader:
        frames = reader.get_frames(segment_indices(reader.num_frames, 8))  # (T, H, W, 3)
    model, transform, head = clip_model.load_with_temporal(path)
    x = transform.video(torch.stack([frames, frames.flip(0)]).flatten(0, 1))  # (2·T, 3, S, S)
    with torch.no_grad():
        feats = model.encode_image(x).view(2, 8, -1)  # (2, T, E): forward, backward
        pooled = {"mean": feats.mean(dim=1), "temporal": head(feats)}  # (2, E) each
    return {k: float(F.cosine_similarity(v[0], v[1], dim=0)) for k, v in pooled.items()}


def run_demo(out: Path, s: DemoSettings = DemoSettings(), progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings, t0 = {}, time.perf_counter()
    _log(f"writing the action world to {out / 'world'}")
    files = write_world(out / "world", s.world)
    timings["world_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    _log(f"training a tiny CLIP from scratch, temporal pooling, {s.steps} steps of {s.batch_size} clips")
    with torch.enable_grad():
        result = train(_train_cfg(s, out, "temporal"), progress=progress)
    history, model = result.history, result.out / "model.pt"
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    zero_shot, confusions, pair_scores = {}, {}, {}
    for pooling in POOLINGS:
        _log(f"zero-shot on held-out pairs, {pooling} pooling (benchmark)")
        cfg = _bench_cfg(out, files, f"zero_shot_{pooling}", model, pooling)
        res = run_benchmark(cfg)
        labels, preds = _predictions(cfg.out / "predictions.csv")
        pair_scores[pooling] = direction_pairs(labels, preds)
        zero_shot[pooling] = {k: res["splits"][0]["metrics"][k] for k in ("top1", "top5", "mean_class_accuracy")} | {
            "videos": res["splits"][0]["videos"], "time_reversed_pairs": pair_scores[pooling]}
        confusions[pooling] = (labels, preds)
    _log("linear probe on the temporal model's embeddings (benchmark)")
    probe_cfg = _bench_cfg(out, files, "linear_probe", model, "temporal", "linear_probe")
    probe = run_benchmark(probe_cfg)["splits"][0]
    captions = retrieval_captions(files["heldout"].parent / "heldout_captions.csv", out / "retrieval_captions.csv")
    retrieval = {}
    for pooling in POOLINGS:
        _log(f"text-to-video retrieval, a clip of each held-out pair, {pooling} pooling (benchmark)")
        split = run_benchmark(_retrieval_cfg(out, files, captions, model, pooling))["splits"][0]
        retrieval[pooling] = {k: split["metrics"][f"t2v_{k}"] for k in ("R@1", "R@5", "R@10", "MdR")} | {
            "videos": split["videos"]}
    timings["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    actions = list(s.world.actions)
    heldout = _heldout_examples(files["heldout"], s.classify_files)
    _log(f"classifying {len(heldout)} held-out files (classify)")
    settings = ClassifySettings(RuntimeSettings(str(model), device="cpu", decode_workers=1), tuple(actions),
                                ProtocolOverrides(str(files["templates"]), pooling="temporal"), topk=3)
    classified = []
    for (path, true_label), r in zip(heldout, classify_videos(settings, [p for p, _ in heldout])):
        classified.append({"path": str(path), "true": true_label, "labels": list(r.prediction.labels) if r.prediction
                           else [], "scores": list(r.prediction.scores) if r.prediction else [], "error": r.error})
    timings["classify_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _log("tagging the held-out videos (tag), then searching them by text (search)")
    tags_out = out / "tags.csv"
    tag_settings = TagSettings(RuntimeSettings(str(model), device="cpu", decode_workers=2), tuple(actions),
                               ProtocolOverrides(str(files["templates"]), s.world.num_frames, "temporal"),
                               window_s=1.0, stride_s=0.5, topk=3)
    summary = tag(tag_settings, files["heldout"].parent / "videos", tags_out, include=["heldout_*"],
                  progress=progress)
    tagged = pd.read_csv(tags_out)
    with open(files["heldout"], newline="") as f:
        truth = {str((files["heldout"].parent / r["path"]).resolve()): r["label"] for r in csv.DictReader(f)}
    query = f"something {actions[0]}"
    hits = search(index_folder(tags_out), query, topk=5)
    tagging = {"videos": summary.total, "ok": summary.ok, "failed": summary.failed,
               "top1": float(np.mean([truth[p] == lab for p, lab in zip(tagged["path"], tagged["label_1"])])),
               "search": {"query": query, "hits": [{"path": Path(h["path"]).name, "kind": h["kind"],
                                                    "score": h["score"], "true": truth.get(h["path"])}
                                                   for h in hits]},
               "serve": f"python run_pipeline.py serve {index_folder(tags_out)}"}
    timings["tag_s"] = time.perf_counter() - t
    cosines = reversal_cosines(model, heldout[0][0])
    timings["total_s"] = time.perf_counter() - t0

    results = {
        "num_classes": len(actions), "chance": 1 / len(actions), "zero_shot": zero_shot,
        "linear_probe": {k: probe["metrics"][k] for k in ("top1", "top5", "mean_class_accuracy")}
        | {"C": probe["C"], "train_videos": probe["train_videos"], "test_videos": probe["videos"]},
        "reversal_cosine": cosines, "tagging": tagging, "retrieval": retrieval,
        "train": {"steps": len(history), "final_loss": history[-1]["loss"], "seconds": history[-1]["seconds"],
                  "clips_per_s": len(history) * s.batch_size / history[-1]["seconds"]},
        "classified": classified, "timings": {k: round(v, 1) for k, v in timings.items()},
        "settings": {"steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed,
                     "world": {"objects": len(s.world.objects), "actions": actions, "size": s.world.size,
                               "num_frames": s.world.num_frames}},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.html").write_text(_report(results, history, confusions, actions, classified))
    return results


def _heldout_examples(heldout_csv: Path, n: int) -> list[tuple[Path, str]]:
    """Up to ``n`` held-out files, one per action first."""
    with open(heldout_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    first = {r["label"]: r for r in reversed(rows)}
    chosen = list(first.values())[::-1][:n]
    return [(heldout_csv.parent / r["path"], r["label"]) for r in chosen]


# ---- report ------------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_png(history: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    loss = np.array([r["loss"] for r in history])
    ax.plot(np.arange(1, len(loss) + 1), loss, color="#bbbbbb", lw=0.7, label="per step")
    if len(loss) > 40:
        ax.plot(np.arange(20, len(loss) + 1), np.convolve(loss, np.ones(20) / 20, mode="valid"), label="20-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _examples_png(classified: list[dict]) -> str:
    plt = _plt()
    rows = [c for c in classified if c["labels"]][:8]
    fig, axes = plt.subplots(len(rows), 4, figsize=(6, 1.7 * len(rows)), squeeze=False)
    for ax_row, c in zip(axes, rows):
        with open_video(c["path"]) as reader:
            frames = reader.get_frames(segment_indices(reader.num_frames, 4))
        for ax, frame in zip(ax_row, frames):
            ax.imshow(frame.numpy())
            ax.axis("off")
        ok = "right" if c["labels"][0] == c["true"] else "WRONG"
        ax_row[0].set_title(f"true: {c['true']} | predicted: {c['labels'][0]} ({c['scores'][0]:.0%}, {ok})",
                            fontsize=8, loc="left")
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _report(results: dict, history: list[dict], confusions: dict, actions: list[str], classified: list[dict]) -> str:
    plots = [("Training loss", _loss_png(history))]
    for pooling, (labels, preds) in confusions.items():
        index = {a: i for i, a in enumerate(actions)}
        onehot = np.eye(len(actions))[[index[p] for p in preds]]
        metrics = compute_metrics(onehot, np.array([index[y] for y in labels]), len(actions))
        plots.append((f"Held-out zero-shot, {pooling} pooling",
                      confusion_png(metrics, actions, f"{pooling} pooling: held-out pairs")))
    plots.append(("Held-out files through classify (temporal model), four of eight frames each",
                  _examples_png(classified)))
    zs, lp, cos = results["zero_shot"], results["linear_probe"], results["reversal_cosine"]
    pair_rows = "".join(f"<tr><td>{html.escape(pair)}</td><td>{zs['mean']['time_reversed_pairs'].get(pair, 0):.0%}"
                        f"</td><td>{score:.0%}</td></tr>" for pair, score in zs["temporal"]["time_reversed_pairs"].items())
    images = "".join(f"<figure><img src='data:image/png;base64,{png}'><figcaption>{html.escape(t)}</figcaption>"
                     f"</figure>" for t, png in plots)
    w, tr, tg, rt = results["settings"]["world"], results["train"], results["tagging"], results["retrieval"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>clip-video demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}figure{{display:inline-block;margin:.5em}}</style>
</head><body><h1>Demo: a tiny CLIP learns actions from scratch</h1>
<p>{w['objects']} objects x {len(w['actions'])} actions, {w['size']}x{w['size']} pixels, {w['num_frames']} frames per
clip. The model trained {tr['steps']} steps of {results['settings']['batch_size']} fresh clips of the <i>seen</i>
(object, action) pairs in {tr['seconds']:.0f} s (final loss {tr['final_loss']:.3f}); every number below is on the
held-out pairs, which no training clip showed. Chance is {results['chance']:.0%}.</p>
<table><tr><th>held-out clips</th><th>top-1</th><th>top-5</th><th>mean class</th></tr>
<tr><td>zero-shot, temporal pooling (the trained pooler)</td><td><b>{zs['temporal']['top1']:.1%}</b></td>
<td>{zs['temporal']['top5']:.1%}</td><td>{zs['temporal']['mean_class_accuracy']:.1%}</td></tr>
<tr><td>zero-shot, mean pooling of the same frame embeddings</td><td><b>{zs['mean']['top1']:.1%}</b></td>
<td>{zs['mean']['top5']:.1%}</td><td>{zs['mean']['mean_class_accuracy']:.1%}</td></tr>
<tr><td>linear probe on the temporal embeddings ({lp['train_videos']} training videos, C={lp['C']:g})</td>
<td><b>{lp['top1']:.1%}</b></td><td>{lp['top5']:.1%}</td><td>{lp['mean_class_accuracy']:.1%}</td></tr>
</table>
<h2>Mean pooling's blind spot</h2>
<p>Eight of the ten actions are four pairs in which one is the other played backwards. Mean pooling averages frame
embeddings, so a clip and the same clip reversed get the same embedding: on a held-out clip the cosine between the
two is {cos['mean']:.6f} with mean pooling and {cos['temporal']:.3f} with the temporal pooler. Within each pair,
mean pooling can therefore do no better than a coin toss on average. The table counts the held-out clips of each
pair that were predicted as one of the two, and how often it was the right one. A mean-pooling score far from 50 %
is not insight: unable to see the direction, it falls back on cues such as which direction it saw that object take
in training, which for a held-out pair is always the other one.</p>
<table><tr><th>pair</th><th>mean pooling</th><th>temporal pooling</th></tr>
{pair_rows}</table>
<h2>Text-to-video retrieval</h2>
<p>Each held-out pair's caption ("a red square moving left") against one clip of every held-out pair
({rt['temporal']['videos']} videos; <code>benchmark</code>'s retrieval protocol): the share of captions whose clip
ranks first, in the top 5 and the top 10, and the median rank. Mean pooling cannot tell a clip from its reverse here
either.</p>
<table><tr><th>pooling</th><th>R@1</th><th>R@5</th><th>R@10</th><th>median rank</th></tr>
{"".join(f"<tr><td>{p}</td><td><b>{rt[p]['R@1']:.1f}</b></td><td>{rt[p]['R@5']:.1f}</td><td>{rt[p]['R@10']:.1f}"
         f"</td><td>{rt[p]['MdR']:g}</td></tr>" for p in ("temporal", "mean"))}</table>
<h2>Tagging and search</h2>
<p>{tg['ok']} of {tg['videos']} held-out videos tagged with the same model (<code>tag</code>; rows in
<code>tags.csv</code>, windows in <code>tags.segments.csv</code>), top-1 {tg['top1']:.1%}. Search
(<code>search</code>) for "{html.escape(tg['search']['query'])}", best first:
{", ".join(f"{html.escape(h['path'])} ({h['kind']}, true: {html.escape(str(h['true']))})"
           for h in tg['search']['hits'])}.</p>
<p>Browse the tagged videos, watch each hit from its moment and see each video's timeline of labels:
<code>{html.escape(tg['serve'])}</code>, then open
<a href="http://127.0.0.1:8000/?q={urllib.parse.quote_plus(tg['search']['query'])}">http://127.0.0.1:8000/?q={
html.escape(urllib.parse.quote_plus(tg['search']['query']))}</a>.</p>
<h2>Plots</h2>{images}
<h2>Timings (seconds)</h2><pre>{html.escape(json.dumps(results['timings'], indent=1))}</pre>
</body></html>"""


def cmd_demo(args: argparse.Namespace) -> int:
    s = DemoSettings()
    if args.steps:
        s = replace(s, steps=args.steps)
    results = run_demo(Path(args.out), s)
    zs = results["zero_shot"]
    print(f"held-out zero-shot top-1: temporal {zs['temporal']['top1']:.1%}, mean {zs['mean']['top1']:.1%}; "
          f"linear probe {results['linear_probe']['top1']:.1%} (chance {results['chance']:.0%})")
    rt = results["retrieval"]
    print(f"held-out text-to-video retrieval R@1: temporal {rt['temporal']['R@1']:.1f}, mean {rt['mean']['R@1']:.1f} "
          f"({rt['temporal']['videos']} videos)")
    for row in results["classified"]:
        got = row["labels"][0] if row["labels"] else row["error"]
        print(f"  {Path(row['path']).name}: {got} (true: {row['true']})")
    print(f"report: {Path(args.out) / 'report.html'}; results: {Path(args.out) / 'results.json'} "
          f"({results['timings']['total_s']:.0f} s)")
    return 0
