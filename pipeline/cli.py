"""Command-line interface: parse arguments, build settings, call the library, print or write results.

Each command's job is imported when the command runs, so ``--help`` and argument errors load neither torch nor the
other jobs."""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clip_model.errors import UserError

from .model.families import POOLINGS, WINDOW_POOLINGS
from .model.runtime import ProtocolOverrides, RuntimeSettings  # light: the options every model job shares
from .video import ENGINES
from .video.samplers import FRAME_CHOICE_HELP, FRAME_CHOICES

if TYPE_CHECKING:  # each command imports its job when it runs: --help and argument errors load no torch
    from .jobs.classify import VideoResult


def cmd_classify(args: argparse.Namespace) -> int:
    from clip_model import cache_dir
    from datasets.labels import load_labels

    from .eval.linear_probe import LinearProbe
    from .jobs.classify import ClassifySettings, classify_videos

    if not args.labels and not args.probe:
        raise UserError("classify needs --labels (zero-shot) or --probe (a saved linear probe)")
    classnames = tuple(load_labels(args.labels)) if args.labels else ()  # before the precision is timed
    probe = LinearProbe.load(args.probe) if args.probe else None
    settings = ClassifySettings(
        runtime=RuntimeSettings.from_arguments(args, probe.fitted_on.get("model") if probe else None),
        classnames=classnames, overrides=ProtocolOverrides.from_arguments(args),
        probe=probe, clips=args.clips, crops=args.crops, topk=args.topk,
        prescale=args.prescale, unknown_below=args.unknown_below, sampling=args.sampling,
        cache_dir=None if args.no_cache else cache_dir() / "features",
    )
    if args.format == "csv":
        print("path,rank,label,score")
    failed = 0
    for result in classify_videos(settings, args.videos):
        for warning in result.warnings:
            print(f"warning: {result.path}: {warning}", file=sys.stderr)
        if result.error:
            print(f"error: {result.path}: {result.error}", file=sys.stderr)
            failed += 1
        else:
            _print_prediction(result, args.format, settings.runtime.precision)
    return 1 if failed else 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from configs.schema import load_config

    from .jobs.benchmark import run_benchmark
    from .jobs.retrieval import split_line

    cfg = load_config(args.config, args.set)
    results = run_benchmark(cfg)
    h = results["headline"]
    for split in results["splits"]:
        m = split["metrics"]
        if cfg.protocol == "retrieval":
            print(split_line(split))
            continue
        print(f"{split['name']}: top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  mean class {m['mean_class_accuracy']:.4f}"
              f"  ({split['videos']} videos, {split['skipped_missing']} missing skipped, {split['failed']} failed)")
    print(f"{cfg.name}: {h['metric']} {h['mean']:.4f} ± {h['std']:.4f} over {h['n']} split(s); report in {cfg.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from configs.schema import TrainConfig, load_config

    from .jobs.train import train

    cfg = load_config(args.config, args.set, cls=TrainConfig)
    import torch

    with torch.enable_grad():
        result = train(cfg, restart=args.restart)
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history[-1]
        note = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
        print(f"{cfg.name}: {last['step']} steps{note}, final loss {last['loss']:.4f}, "
              f"{last['seconds']:.0f} s of training; model in {result.out / 'model.pt'}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from datasets.labels import load_labels

    from .jobs.tag.index_state import recorded_precision
    from .jobs.tag.job import TagSettings, tag

    if not args.labels:
        raise UserError("tag needs --labels: a file with one label per line, or a shipped list such as kinetics400")
    settings = TagSettings(  # a resume continues in the precision its rows were written in
        RuntimeSettings.from_arguments(args, resumed_precision=(resumed := recorded_precision(Path(args.out)))),
        labels=tuple(load_labels(args.labels)), overrides=ProtocolOverrides.from_arguments(args),
        window_s=args.window, stride_s=args.stride, topk=args.topk, commit_every=args.commit_every,
        chunk_mb=args.chunk_mb, above=args.above, engine=args.engine, ray_address=args.ray_address,
        sampling=args.sampling, encoders=args.encoders, auto_precision=args.precision == "auto" and not resumed)
    summary = tag(settings, args.source, args.out, include=args.include, exclude=args.exclude,
                  retry_failed=args.retry_failed, forget_missing=args.forget_missing, restart=args.restart)
    print(summary.line())
    return 0


def cmd_retag(args: argparse.Namespace) -> int:
    from datasets.labels import load_labels

    from .jobs.tag.query import retag

    if args.above is not None and not 0 < args.above < 1:
        raise UserError(f"--above {args.above}: must lie in (0, 1)")
    out = retag(args.index, load_labels(args.labels), args.out, templates=args.templates, topk=args.topk,
                device=args.device, above=args.above)
    print(f"re-tagged {args.index} with {args.labels}: rows in {out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .jobs.tag.query import SearchFilter, search

    where = SearchFilter(args.path, args.label, args.after, args.before, args.kind)
    hits = search(args.index, args.query, args.topk, args.device, where)
    from .jobs.tag.index_state import shown_name

    for hit in hits:
        hit["path"] = shown_name(hit["path"])  # a name that is not UTF-8 prints with its odd bytes as \xHH
    if args.format == "json":
        print("\n".join(json.dumps(hit) for hit in hits), end="\n" if hits else "")  # one object per line
        return 0
    if not hits:
        print(f"no hits for {args.query!r} in {args.index}" + (" with these filters" if where.sql() else ""))
    for hit in hits:
        span = "whole video" if hit["kind"] == "video" else f"{hit['start_s']:.1f}-{hit['end_s']:.1f} s"
        print(f"{hit['score']:.4f}  {hit['path']}  ({span}; tagged {hit['labels'][0]})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .jobs.tag.index import open_indexes
    from .jobs.tag.maintenance import verify_index

    reports = [verify_index(index.folder) for index in open_indexes(Path(args.index))]
    for report in reports:
        print(report.line(), *(f"  damaged: {problem}" for problem in report.damaged), sep="\n")
    return 0 if all(r.ok for r in reports) else 1


def cmd_repair_index(args: argparse.Namespace) -> int:
    from .jobs.tag.maintenance import repair_index

    state = repair_index(Path(args.index).expanduser())
    print(f"rebuilt {args.index}/state.json: videos at version {state.versions['videos']}, embeddings at version "
          f"{state.versions['embeddings']}, {state.rows.get('videos', 0)} video rows; run_pipeline.py verify checks it")
    return 0


def cmd_migrate_index(args: argparse.Namespace) -> int:
    from .jobs.tag.migrate import migrate_index

    for folder in migrate_index(args.index, args.device):
        print(f"migrated {folder} to the Lance tag index")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .jobs.serve.app import serve

    serve(args.index, args.host, args.port, args.token, args.device)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .model.loading import models_listing

    print(models_listing())
    return 0


def _job(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command that a job module defines (``pipeline.jobs.<module>.<name>``), imported when the command runs."""
    return lambda args: getattr(importlib.import_module(f"pipeline.jobs.{module}"), name)(args)


def _print_prediction(result: VideoResult, fmt: str, precision: str) -> None:
    """One video's answer: its top labels as scored (they sum as the model's scoring says), and, where no label
    reached --unknown-below, the answer ``unknown`` beside them rather than among them."""
    path, pred = result.path, result.prediction
    assert pred is not None
    if fmt == "json":
        print(json.dumps({"path": str(path), "answer": result.answer, "labels": list(pred.labels),
                          "scores": list(pred.scores), "warnings": list(result.warnings), "precision": precision}))
    elif fmt == "csv":  # the csv module quotes what needs it (a label or path with a quote, comma or newline)
        rows = ([[str(path), 0, result.answer, ""]] if result.unknown else []) + [
            [str(path), rank, label, f"{score:.6f}"] for rank, (label, score) in enumerate(zip(pred.labels, pred.scores), 1)]
        csv.writer(sys.stdout, lineterminator="\n").writerows(rows)
    else:
        print(path)
        if result.unknown:
            print(f"  unknown  (no label reaches --unknown-below; the best is {pred.scores[0]:.2%})")
        for label, score in zip(pred.labels, pred.scores):
            print(f"  {score:7.2%}  {label}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CLIP-based video action recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classify", help="zero-shot classify videos with your own labels")
    p.add_argument("videos", nargs="+", help="video files")
    p.add_argument("--labels", help="file with one label per line, or ucf101|hmdb51|kinetics400|kinetics600|"
                                    "kinetics700|ssv2 (zero-shot)")
    p.add_argument("--probe", help="a linear probe saved by `benchmark` (probe_*.npz): classify with it instead")
    ProtocolOverrides.add_arguments(p, POOLINGS, "frames per clip: one from the middle of each of N segments (or N "
                                                 "consecutive with --clips)")
    p.add_argument("--clips", type=int, default=1, help="temporal views (multi-view testing); scores are averaged")
    p.add_argument("--crops", type=int, choices=(1, 3), default=1, help="spatial views: centre, or three crops")
    p.add_argument("--prescale", action="store_true", help="scale frames whose short side exceeds twice the model's input "
                   "down in the decoder, then resize: 9-11%% faster on 720p/1080p, inputs about 1 grey level off the single "
                   "resize the references do (the default)")
    p.add_argument("--sampling", choices=FRAME_CHOICES, default="exact", help=FRAME_CHOICE_HELP.format("sampled frames"))
    p.add_argument("--unknown-below", type=float, default=None, metavar="P", help="open set: answer 'unknown' when the "
                   "top probability is below P (softmax: the top label's share; sigmoid: its own probability, so no label "
                   "is likely); the labels are still listed with their own scores (csv: 'unknown' at rank 0; json: \"answer\")")
    p.add_argument("--no-cache", action="store_true", help="do not cache text features on disk")
    p.add_argument("--topk", type=int, default=5, help="labels listed per video, best first")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (for reading), csv (path,rank,label,score) or json (one object per video a line)")
    RuntimeSettings.add_arguments(p)
    p.set_defaults(func=cmd_classify)
    p = sub.add_parser("benchmark", help="run a benchmark protocol from a YAML config and write a report")
    p.add_argument("--config", required=True,
                   help="a YAML file, or the name of a shipped protocol (e.g. ucf101_zero_shot; they ship with the "
                        "package, see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model=ViT-B/16 --set dataset.splits=[1]")
    p.set_defaults(func=cmd_benchmark)
    p = sub.add_parser("train", help="contrastive video-text training from a YAML config (resumes after a kill)")
    p.add_argument("--config", required=True, help="a YAML file, e.g. configs/train_world.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set steps=200 --set freeze=image")
    p.add_argument("--restart", action="store_true", help="discard the run's checkpoint and start over")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("tag", help="tag a folder or manifest of videos, per video and per time window (resumable)",
                       description="Frames whose short side exceeds twice the model's input are scaled down in the "
                                   "decoder before the model's resize (9-11%% faster decoding on 720p/1080p; model "
                                   "inputs about 1 grey level off a single resize; classify --prescale does the same)")
    p.add_argument("source", help="an archive folder (searched recursively) or a manifest file (one path per line)")
    p.add_argument("--out", required=True, help="per-video rows: .parquet, .csv or .jsonl; segments and errors go to "
                                                "OUT's .segments/.errors siblings, the index to OUT.index/")
    p.add_argument("--labels", help="file with one label per line, or a shipped list (kinetics400, ucf101, ...)")
    ProtocolOverrides.add_arguments(p, WINDOW_POOLINGS, "frames per window")
    p.add_argument("--window", type=float, default=4.0, help="window length in seconds")
    p.add_argument("--stride", type=float, default=2.0, help="seconds between window starts")
    p.add_argument("--sampling", choices=FRAME_CHOICES, default="exact", help=FRAME_CHOICE_HELP.format("windows"))
    p.add_argument("--topk", type=int, default=5, help="labels kept per video and per window, best first")
    p.add_argument("--above", type=float, default=None, metavar="P",
                   help="multi-label: also list every label whose probability is at least P (column labels_above)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="only paths matching (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip paths matching (repeatable)")
    p.add_argument("--commit-every", type=int, default=32, help="videos per committed part (resume granularity)")
    p.add_argument("--chunk-mb", type=float, default=32.0,
                   help="decoded frames a worker holds at once (MB): bounds memory on hour-long videos")
    p.add_argument("--retry-failed", action="store_true", help="on a resume, tag again the unchanged files that failed "
                   "before (error, timeout or crash; e.g. with a longer --decode-timeout); a plain rerun skips them")
    p.add_argument("--restart", action="store_true",
                   help="discard the tag index under OUT.index and start over (a resume never deletes it otherwise)")
    p.add_argument("--engine", choices=ENGINES, default="local", help="where videos are decoded: local worker processes, "
                   "or Ray tasks on a cluster's CPUs (pip install 'clip-video[ray]'); the rows and the index are the same")
    p.add_argument("--ray-address", help="--engine ray: the cluster to join (default: a local one on 127.0.0.1)")
    p.add_argument("--encoders", type=int, help="--engine ray: model actors, each on a GPU where the cluster has them, "
                   "else a CPU (default: one per GPU; without GPUs, or 0: this process encodes)")
    p.add_argument("--forget-missing", action="store_true", help="delete the stored rows of files that no longer exist (a "
                   "plain rerun keeps them); judged by each file's existence now, so mind an unmounted drive")
    RuntimeSettings.add_arguments(p)
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("retag", help="score a tag index against new labels, without decoding")
    p.add_argument("index", help="the OUT.index folder written by tag")
    p.add_argument("--labels", required=True, help="the new vocabulary: a file with one label per line, or a shipped list")
    p.add_argument("--out", required=True, help="new per-video rows (.parquet, .csv or .jsonl) and siblings")
    p.add_argument("--templates", default=None, help="default: the templates the index was tagged with")
    p.add_argument("--topk", type=int, default=None, help="labels kept per video and window; default: the index's")
    p.add_argument("--above", type=float, default=None, metavar="P",
                   help="multi-label: also list every label whose probability is at least P (column labels_above)")
    p.add_argument("--device", default="auto", help="where the label texts are encoded: auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_retag)
    p = sub.add_parser("search", help="rank the videos and segments of a tag index by a text query")
    p.add_argument("index", help="the OUT.index folder written by tag")
    p.add_argument("query", help="what to look for, in words (e.g. \"a person riding a bike\")")
    p.add_argument("--topk", type=int, default=10, help="hits listed, best first")
    p.add_argument("--path", metavar="GLOB", help="only videos whose path matches (* and ?)")
    p.add_argument("--label", help="only videos and windows whose top label at tagging time was this")
    p.add_argument("--after", type=float, metavar="S", help="only windows that end at or after S seconds")
    p.add_argument("--before", type=float, metavar="S", help="only windows that start at or before S seconds")
    p.add_argument("--kind", choices=("video", "segment"), help="only whole videos, or only windows")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (for reading) or json (one hit a line: path, kind, start_s, end_s, score, labels, video_id)")
    p.add_argument("--device", default="auto", help="where the query is encoded: auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("verify", help="check a tag index: every file against its SHA-256, every table's row count")
    p.add_argument("index", help="the OUT.index folder written by tag")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("repair-index", help="rebuild a lost state.json of a tag index from its tables")
    p.add_argument("index", help="the OUT.index folder written by tag")
    p.set_defaults(func=cmd_repair_index)
    p = sub.add_parser("migrate-index", help="convert a tag index of the first format (manifest.json) in place")
    p.add_argument("index", help="the OUT.index folder")
    p.add_argument("--device", default="auto", help="where the stored label texts are encoded again: auto, cpu or cuda")
    p.set_defaults(func=cmd_migrate_index)
    p = sub.add_parser("serve", help="a web page over a tag index: search, watch the moment, see each timeline")
    p.add_argument("index", help="the OUT.index folder written by tag")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback needs --token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--token", default=os.environ.get("CLIP_VIDEO_TOKEN"), help="a secret every request must carry (the "
                   "printed link carries it); default: $CLIP_VIDEO_TOKEN, which other users here cannot read in the process list")
    p.add_argument("--device", default="cpu", help="where the search text is encoded")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("watch", help="recognise actions live: a camera, a stream URL (rtsp, udp, http, ...) or a file")
    p.add_argument("source", help="rtsp://, rtmp://, udp://, srt://, http(s):// (MPEG-TS, HLS), /dev/videoN, or a file")
    p.add_argument("--labels", required=True, help="file with one label per line, or a shipped list")
    ProtocolOverrides.add_arguments(p, WINDOW_POOLINGS, "frames per window")
    p.add_argument("--window", type=float, default=4.0, help="window length in seconds")
    p.add_argument("--stride", type=float, default=1.0, help="seconds between window starts")
    p.add_argument("--topk", type=int, default=3, help="labels kept per window, best first")
    p.add_argument("--above", type=float, default=None, metavar="P", help="a window is an action only at probability P+")
    p.add_argument("--realtime", action="store_true", help="play a file at its own pace (as a live source would come)")
    p.add_argument("--out", default=None, help="append windows, events and gaps to this file, a JSON object a line")
    p.add_argument("--serve", type=int, default=None, metavar="PORT", help="also show a live page at http://127.0.0.1:PORT/")
    RuntimeSettings.add_arguments(p)
    p.set_defaults(func=_job("watch", "cmd_watch"))
    p = sub.add_parser("models", help="list the models --model knows by name: family, input, frames, scoring, source")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("demo", help="generate an action world, train a tiny CLIP on it, evaluate, classify, report")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's 1,500; fewer train faster, less well)")
    p.set_defaults(func=_job("demo", "cmd_demo"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from .video.supervisor import keep_freed_memory

    torch.set_grad_enabled(False)
    keep_freed_memory()  # steps reuse their memory instead of page-faulting it back (video.supervisor)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: processes sharing this machine
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_ranks))  # every core this process is given
    signal.signal(signal.SIGTERM, _terminated)  # SIGTERM ends a job as Ctrl-C does: cleanly, in one line
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print(str(e) if str(e).startswith("interrupted") else "interrupted", file=sys.stderr)
        return 128 + _signal_received[0]
    except (UserError, ImportError) as e:  # what the user gave or installed cannot be used: the message says
        print(f"error: {e}", file=sys.stderr)  # what and what to do (a missing package: pip install ...)
        return 2
    except OSError as e:  # a missing file, a full disk, a read-only folder: the file and what the system said
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # anything else is a bug of ours, whatever its type: say so, with where it happened
        print(bug_report(e), file=sys.stderr)
        return BUG_EXIT
    finally:
        from .video.supervisor import reap_helpers

        reap_helpers()


BUG_EXIT = 70  # EX_SOFTWARE (sysexits.h): an internal error, not a usage error (2)


def bug_report(e: BaseException) -> str:
    """The innermost 6 frames of an unexpected exception (where it happened), saying it is a bug and what to send."""
    return "".join(traceback.TracebackException.from_exception(e, limit=-6).format()).rstrip() + (
        "\ninternal error: this is a bug in clip-video, not in what you passed; please report it with the command "
        "line and the lines above")


_signal_received = [signal.SIGINT.value]


def _terminated(signum: int, frame: object) -> None:
    _signal_received[0] = signum
    raise KeyboardInterrupt
