"""Batch tagging of video archives: resumable, fault-isolated, and searchable afterwards.

    discover -> windows (``pipeline.windows``: chunks decoded in supervised workers, encoded here in batches across
    videos, pooled per window) -> commit a part -> ... -> score labels and write OUT, OUT.segments.*, OUT.errors.*

Every video is decoded once into sliding windows (``window_s`` seconds every ``stride_s``, ``num_frames`` frames
each). A window's embedding is its pooled frames; a video's is the normalised mean of its windows'. Labels are
scored zero-shot against both, and adjacent windows with the same top label merge into action segments.

Resume. Results are committed in parts: the part's files are written under temporary names and renamed, then the
manifest (``OUT.index/manifest.json``) that lists committed parts is replaced atomically. A kill at any moment
leaves either the old manifest or the new one; parts it does not list are deleted on the next run. Videos a
committed part holds are skipped unless their size or modification time changed (then they are tagged again and
the newer part wins). The final files are rebuilt from the parts, one row set per video: none lost, none twice.

The index keeps every video and window embedding, so ``retag`` scores a new vocabulary and ``search`` ranks videos
and segments for a text query without decoding a frame.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import clip_model
from clip_model.config import PreprocessConfig
from configs.schema import changed_settings
from pipeline.model_spec import load_model, model_identity, resolve_device
from pipeline.prompts import class_embeddings, load_templates
from pipeline.runtime import RuntimeSettings
from pipeline.windows import WindowTask, embed_windows

from ..distributed import barrier, init_distributed
from .discover import discover, file_stamp
from .index import Index, index_folder, read_indexes
from .scoring import check_output, score_rows, write_outputs


@dataclass(frozen=True)
class TagSettings:
    runtime: RuntimeSettings
    labels: tuple[str, ...]
    templates: str = "video"
    pooling: str = "mean"  # mean | max | temporal (a checkpoint written by train)
    num_frames: int = 8  # frames per window
    window_s: float = 4.0
    stride_s: float = 2.0
    topk: int = 5
    max_rss_mb: float = 2048.0  # a decode worker above this is replaced after its task
    chunk_mb: float = 32.0  # decoded frames a worker holds at once: bounds memory on hour-long videos
    commit_every: int = 32  # videos per committed part

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("tag needs at least one label")
        for key in ("num_frames", "topk", "commit_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} ({getattr(self, key)}) must be >= 1")
        if self.chunk_mb <= 0:
            raise ValueError(f"chunk_mb ({self.chunk_mb}) must be > 0")
        if self.window_s <= 0 or self.stride_s <= 0:
            raise ValueError("window_s and stride_s must be > 0")
        if self.pooling not in ("mean", "max", "temporal"):
            raise ValueError(f"pooling {self.pooling!r}: choose mean, max or temporal")

    def identity(self) -> dict:
        """What the stored rows depend on: a resume must match it (the model by its weights' key)."""
        return {"model": model_identity(self.runtime.model, self.runtime.precision), "labels": list(self.labels),
                "templates": self.templates, "pooling": self.pooling, "num_frames": self.num_frames,
                "window_s": self.window_s, "stride_s": self.stride_s, "topk": self.topk}

    def task(self, path: str, preprocess: PreprocessConfig) -> WindowTask:
        """One video's decode task; the decoder caps the short side at twice the model's input, as classify does."""
        return WindowTask(path, preprocess, self.num_frames, self.window_s, self.stride_s, self.runtime.backend,
                          2 * preprocess.image_size, self.chunk_mb)


# ---- decoding ------------------------------------------------------------------------------------------------------


def _error_row(path: str, status: str, error: str, stamp) -> dict:
    stage, _, reason = error.partition(": ") if error.startswith(("open: ", "decode: ", "model: ")) else (
        "decode", "", error)
    return {"path": path, "stage": stage, "status": status, "reason": reason, "stamp": stamp}


# ---- the job -------------------------------------------------------------------------------------------------------


@dataclass
class TagSummary:
    total: int
    skipped: int  # already tagged (unchanged) in an earlier run
    ok: int
    failed: dict  # status -> count
    seconds: float
    out: Path

    def line(self) -> str:
        rate = (self.ok + sum(self.failed.values())) / self.seconds if self.seconds else 0.0
        failed = ", ".join(f"{n} {s}" for s, n in sorted(self.failed.items())) or "none"
        return (f"{self.total} videos: {self.ok} tagged, {self.skipped} already done, failed: {failed}; "
                f"{rate:.2f} videos/s; rows in {self.out}")


def tag(settings: TagSettings, source: str | Path, out: str | Path, *, include: Sequence[str] = (),
        exclude: Sequence[str] = (), progress: bool = True) -> TagSummary:
    """Tag every video of ``source`` (folder or manifest) into ``out`` and its siblings; resumable (see module doc)."""
    start = time.perf_counter()
    rt = settings.runtime
    out = Path(out).expanduser().resolve()
    check_output(out)
    paths, listing_errors = discover(source, include, exclude)
    rank, world, device = init_distributed(resolve_device(rt.device))
    index = Index(index_folder(out) if world == 1 else index_folder(out) / f"rank-{rank:03d}-of-{world:03d}")
    if world > 1:  # every rank lists the same sorted paths and takes every world-th one
        paths, listing_errors = paths[rank::world], listing_errors if rank == 0 else []
    manifest = index.load()
    identity = settings.identity() | ({"shard": [rank, world]} if world > 1 else {})
    if manifest is None:
        manifest = index.create(identity)
    elif changed := changed_settings(manifest["settings"], identity):
        raise ValueError(f"{index.folder}: cannot resume, settings changed since it was written: "
                         f"{'; '.join(changed)}; use another --out or delete the index to start over")
    index.clean_orphans(manifest)
    done = index.done(manifest)
    todo = [p for p in paths if done.get(str(p)) is None or done[str(p)] != file_stamp(p)]
    listing_errors = [e | {"stamp": None} for e in listing_errors]  # re-listed every run; the newest part wins

    model, transform, head = load_model(rt.model, device, rt.precision, settings.pooling)
    tasks = [settings.task(str(p), model.preprocess_config) for p in todo]
    failed: dict[str, int] = {}
    ok = 0
    pending: dict = {"videos": [], "windows": [], "errors": list(listing_errors)}
    vids: list[np.ndarray] = []
    wins: list[np.ndarray] = []

    def commit() -> None:
        if pending["videos"] or pending["errors"]:
            index.commit(manifest, pending, np.stack(vids) if vids else np.zeros((0, 0), np.float32),
                         np.concatenate(wins) if wins else np.zeros((0, 0), np.float32))
        pending.update(videos=[], windows=[], errors=[])
        vids.clear()
        wins.clear()

    bar = tqdm(total=len(tasks), desc="tag", unit="video", dynamic_ncols=True, disable=None if progress else True)
    stream = embed_windows(tasks, model, transform, pooling=settings.pooling, head=head,
                           batch_size=rt.batch_size, decode_workers=rt.decode_workers,
                           timeout_s=rt.decode_timeout_s, max_rss_mb=settings.max_rss_mb) if tasks else iter(())
    # (nothing left to do: no worker process is started)
    for task, video, error in stream:
        stamp = file_stamp(Path(task.path))
        if error is not None:
            status, _, reason = error.partition(": ")
            pending["errors"].append(_error_row(task.path, status, reason, stamp))
            failed[status] = failed.get(status, 0) + 1
        else:
            n_win = sum(len(w) for w in wins)
            for k, (s, e) in enumerate(video.bounds):
                pending["windows"].append({"path": task.path, "window": k, "start_s": round(s, 3),
                                           "end_s": round(e, 3), "emb": n_win + k})
            wins.append(video.windows.numpy().astype(np.float32))
            pending["videos"].append({"path": task.path, "status": "ok", "duration_s": round(video.info.duration, 3),
                                      "decoder": video.info.backend, "windows": len(video.windows), "emb": len(vids),
                                      "warnings": " | ".join(video.warnings), "stamp": stamp})
            vids.append(F.normalize(video.windows.mean(dim=0), dim=-1).numpy().astype(np.float32))
            ok += 1
        bar.update()
        if len(pending["videos"]) + len(pending["errors"]) >= settings.commit_every:
            commit()
    commit()
    bar.close()
    barrier(world)
    if rank == 0:  # merge every rank's index into one set of outputs
        write_index_outputs(index_folder(out), out, model, settings.labels, settings.templates, settings.topk)
    barrier(world)
    return TagSummary(len(paths), len(paths) - len(todo), ok, failed, time.perf_counter() - start, out)


def write_index_outputs(folder: Path, out: Path, model, labels: Sequence[str], templates: str, topk: int) -> None:
    """Score the index's embeddings against ``labels`` and write OUT and its siblings."""
    _, rows, video_emb, window_emb = read_indexes(folder)
    text = class_embeddings(model, list(labels), load_templates(templates)).float().cpu()
    scale = float(model.logit_scale.detach().exp().clamp(max=100))
    write_outputs(out, *score_rows(rows, video_emb, window_emb, text, scale, labels, topk))


def retag(index_path: str | Path, labels: Sequence[str], out: str | Path, templates: str | None = None,
          topk: int | None = None, device: str = "auto") -> Path:
    """Score a tag index against a new vocabulary without decoding; writes OUT and its siblings."""
    folder = Path(index_path).expanduser()
    settings = read_indexes(folder)[0]
    out = Path(out).expanduser().resolve()
    check_output(out)
    model = _index_model(settings, device)
    write_index_outputs(folder, out, model, labels, templates or settings["templates"], topk or settings["topk"])
    return out


def _index_model(settings: dict, device: str) -> clip_model.CLIP:
    """The model a tag index was written with, from its stored identity."""
    return load_model(settings["model"]["spec"], resolve_device(device), settings["model"]["precision"])[0]


def search(index_path: str | Path, query: str, topk: int = 10, device: str = "auto") -> list[dict]:
    """The videos and windows whose embeddings best match ``query`` (cosine), best first."""
    settings, rows, video_emb, window_emb = read_indexes(Path(index_path).expanduser())
    model = _index_model(settings, device)
    from clip_model import tokenize

    with torch.no_grad():
        q = F.normalize(model.encode_text(tokenize([query]).to(next(model.parameters()).device)).float().cpu(),
                        dim=-1)[0]
    q = q.numpy()
    video_scores = video_emb @ q if len(video_emb) else np.zeros(0)  # (N,) cosines: both sides are unit vectors
    window_scores = window_emb @ q if len(window_emb) else np.zeros(0)
    hits = [{"kind": "video", "path": r["path"], "start_s": 0.0, "end_s": r["duration_s"],
             "score": float(video_scores[r["emb"]])} for r in rows["videos"]]
    hits += [{"kind": "segment", "path": r["path"], "start_s": r["start_s"], "end_s": r["end_s"],
              "score": float(window_scores[r["emb"]])} for r in rows["windows"]]
    return sorted(hits, key=lambda h: -h["score"])[:topk]
