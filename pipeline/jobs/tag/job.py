"""Batch tagging of video archives: resumable, fault-isolated, and searchable afterwards.

    discover -> windows (pipeline.windows: chunks decoded in supervised workers, encoded here in batches across
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

import fnmatch
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clip_model.config import PreprocessConfig
from configs.schema import changed_settings
from pipeline.model_spec import load_model, model_key, resolve_device
from pipeline.prompts import class_embeddings, load_templates
from pipeline.windows import WindowTask, embed_windows
from pipeline.zero_shot import top_k, zero_shot_probs

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
FORMATS = (".parquet", ".csv", ".jsonl")
INDEX_VERSION = 1


@dataclass(frozen=True)
class TagSettings:
    model: str
    labels: tuple[str, ...]
    templates: str = "video"
    pooling: str = "mean"  # mean | max | temporal (a checkpoint written by train)
    num_frames: int = 8  # frames per window
    window_s: float = 4.0
    stride_s: float = 2.0
    topk: int = 5
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    backend: str = "auto"
    decode_workers: int = 2
    decode_timeout_s: float = 300.0  # a decode worker that yields nothing for this long is killed (status timeout)
    max_rss_mb: float = 2048.0  # a decode worker above this is replaced after its task
    chunk_mb: float = 32.0  # decoded frames a worker holds at once: bounds memory on hour-long videos
    commit_every: int = 32  # videos per committed part

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("tag needs at least one label")
        for key in ("num_frames", "topk", "batch_size", "decode_workers", "commit_every"):
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
        return {"model": model_key(self.model, self.precision), "labels": list(self.labels),
                "templates": self.templates, "pooling": self.pooling, "num_frames": self.num_frames,
                "window_s": self.window_s, "stride_s": self.stride_s, "topk": self.topk}

    def task(self, path: str, preprocess: PreprocessConfig) -> WindowTask:
        """One video's decode task; the decoder caps the short side at twice the model's input, as classify does."""
        return WindowTask(path, preprocess, self.num_frames, self.window_s, self.stride_s, self.backend,
                          2 * preprocess.image_size, self.chunk_mb)


# ---- discovery -----------------------------------------------------------------------------------------------------


def discover(source: str | Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
             ) -> tuple[list[Path], list[dict]]:
    """Absolute paths of the videos under a folder (recursive, sorted) or listed in a manifest file (one path per line,
    relative to the manifest; ``#`` comments), and error rows for folders that cannot be read.

    ``include``/``exclude`` are globs on the path relative to the folder (default: common video extensions).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ValueError(f"{source}: no such archive folder or manifest file")
    errors: list[dict] = []
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{source}: cannot read the manifest: {e}") from None
        paths = [(source.parent / line.strip()).resolve() for line in lines
                 if line.strip() and not line.lstrip().startswith("#")]
        return list(dict.fromkeys(paths)), errors

    def unreadable(e: OSError) -> None:
        errors.append({"path": str(Path(e.filename).resolve()), "stage": "open", "status": "error",
                       "reason": f"cannot list folder: {e.strerror}"})

    found = []
    for root, dirs, files in os.walk(source, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(source).as_posix()
            wanted = any(fnmatch.fnmatch(rel, g) for g in include) if include else name.lower().endswith(
                VIDEO_EXTENSIONS)
            if wanted and not any(fnmatch.fnmatch(rel, g) for g in exclude):
                found.append((Path(root) / name).resolve())
    return found, errors


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


# ---- the index (parts + manifest) ----------------------------------------------------------------------------------


class Index:
    """``OUT.index/``: manifest.json listing committed parts; each part a JSON file of rows and an .npz of embeddings."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest_path = folder / "manifest.json"

    def load(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.manifest_path}: unreadable tag index ({e}); delete the folder to start over") \
                from None
        if manifest.get("version") != INDEX_VERSION:
            raise ValueError(f"{self.manifest_path}: index version {manifest.get('version')} is not {INDEX_VERSION}")
        return manifest

    def create(self, settings: dict) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"version": INDEX_VERSION, "settings": settings, "parts": []}
        self._write_manifest(manifest)
        return manifest

    def clean_orphans(self, manifest: dict) -> None:
        """Delete part files a kill left behind without listing them."""
        listed = {p["name"] for p in manifest["parts"]}
        for f in self.folder.iterdir():
            if f.name.startswith("part-") and f.name.split(".")[0] not in listed:
                f.unlink()

    def commit(self, manifest: dict, rows: dict, video_emb: np.ndarray, window_emb: np.ndarray) -> None:
        name = f"part-{len(manifest['parts']):06d}"
        rows_tmp, emb_tmp = self.folder / f"{name}.json.tmp", self.folder / f"{name}.npz.tmp"
        rows_tmp.write_text(json.dumps(rows))
        with open(emb_tmp, "wb") as f:
            np.savez(f, videos=video_emb, windows=window_emb)
        for tmp in (rows_tmp, emb_tmp):
            _fsync(tmp)
            tmp.replace(tmp.with_name(tmp.name[: -len(".tmp")]))
        stamps = {r["path"]: r["stamp"] for r in rows["videos"] + rows["errors"]}
        manifest["parts"].append({"name": name, "stamps": stamps})
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_name("manifest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.manifest_path)

    def done(self, manifest: dict) -> dict[str, list[int]]:
        """Path -> the (size, mtime) it was tagged at, newest part winning."""
        out: dict[str, list[int]] = {}
        for part in manifest["parts"]:
            out.update(part["stamps"])
        return out

    def read(self, manifest: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """All rows (one set per video: the newest part's) with embedding row numbers rebased, and the embeddings."""
        owner = {}
        for part in manifest["parts"]:
            for path in part["stamps"]:
                owner[path] = part["name"]
        rows: dict[str, list[dict]] = {"videos": [], "windows": [], "errors": []}
        videos, windows = [], []
        nv = nw = 0
        for part in manifest["parts"]:
            data = json.loads((self.folder / f"{part['name']}.json").read_text())
            emb = np.load(self.folder / f"{part['name']}.npz")
            for kind in rows:
                for r in data[kind]:
                    if owner.get(r["path"]) == part["name"]:
                        r = dict(r)
                        if kind == "videos":
                            r["emb"] += nv
                        elif kind == "windows":
                            r["emb"] += nw
                        rows[kind].append(r)
            videos.append(emb["videos"])
            windows.append(emb["windows"])
            nv, nw = nv + len(emb["videos"]), nw + len(emb["windows"])
        return rows, _concat(videos), _concat(windows)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Row-stack embedding blocks; parts that hold only errors have none."""
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def index_folder(out: Path) -> Path:
    return out.with_name(out.name + ".index")


# ---- decoding ------------------------------------------------------------------------------------------------------


def _error_row(path: str, status: str, error: str, stamp) -> dict:
    stage, _, reason = error.partition(": ") if error.startswith(("open: ", "decode: ", "model: ")) else (
        "decode", "", error)
    return {"path": path, "stage": stage, "status": status, "reason": reason, "stamp": stamp}


# ---- scoring -------------------------------------------------------------------------------------------------------


def _top(probs: torch.Tensor, labels: Sequence[str], k: int) -> dict:
    """(C,) probabilities -> flat columns label_1, score_1, ... label_k, score_k."""
    (pred,) = top_k(probs[None], labels, k)
    row = {}
    for j, (label, score) in enumerate(zip(pred.labels, pred.scores), 1):
        row[f"label_{j}"], row[f"score_{j}"] = label, score
    return row


def score_rows(rows: dict, video_emb: np.ndarray, window_emb: np.ndarray, text: torch.Tensor, scale: float,
               labels: Sequence[str], topk: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Top-k per video and per window, and windows merged into action segments where adjacent top labels agree."""
    vp = zero_shot_probs(torch.from_numpy(video_emb).float(), text, scale) if len(video_emb) else None
    wp = zero_shot_probs(torch.from_numpy(window_emb).float(), text, scale) if len(window_emb) else None
    videos = [{k: v for k, v in r.items() if k not in ("emb", "stamp")} | _top(vp[r["emb"]], labels, topk)
              for r in rows["videos"]]
    windows, actions = [], []
    for r in rows["windows"]:
        top = _top(wp[r["emb"]], labels, topk)
        windows.append({"path": r["path"], "kind": "window", "window": r["window"], "start_s": r["start_s"],
                        "end_s": r["end_s"]} | top)
    for path, group in pd.DataFrame(windows).groupby("path", sort=False) if windows else []:
        current = None
        for w in group.sort_values("window").to_dict("records"):
            if current is not None and current["label_1"] == w["label_1"] and w["start_s"] <= current["end_s"]:
                current["end_s"], current["windows"] = w["end_s"], current["windows"] + 1
                current["score_1"] = max(current["score_1"], w["score_1"])
            else:
                current = {"path": path, "kind": "action", "window": w["window"], "start_s": w["start_s"],
                           "end_s": w["end_s"], "label_1": w["label_1"], "score_1": w["score_1"], "windows": 1}
                actions.append(current)
    return videos, windows + actions, [{k: v for k, v in r.items() if k != "stamp"} for r in rows["errors"]]


def write_table(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    """Atomically write rows as .parquet, .csv or .jsonl (by ``path``'s suffix)."""
    df = pd.DataFrame(rows, columns=columns) if columns and not rows else pd.DataFrame(rows)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    elif path.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_json(tmp, orient="records", lines=True)
    tmp.replace(path)


def sibling(out: Path, what: str) -> Path:
    """tags.parquet -> tags.segments.parquet / tags.errors.parquet."""
    return out.with_name(f"{out.stem}.{what}{out.suffix}")


def write_outputs(out: Path, videos: list[dict], segments: list[dict], errors: list[dict]) -> None:
    write_table(videos, out, ["path"])
    write_table(segments, sibling(out, "segments"), ["path", "kind", "window", "start_s", "end_s"])
    write_table(errors, sibling(out, "errors"), ["path", "stage", "status", "reason"])


def check_output(out: Path) -> None:
    if out.suffix not in FORMATS:
        raise ValueError(f"--out {out}: the file name must end in {', '.join(FORMATS)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {parent} is not writable")


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
    out = Path(out).expanduser().resolve()
    check_output(out)
    paths, listing_errors = discover(source, include, exclude)
    rank, world = _rank_world()
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
    todo = [p for p in paths if done.get(str(p)) is None or done[str(p)] != _stamp(p)]
    listing_errors = [e | {"stamp": None} for e in listing_errors]  # re-listed every run; the newest part wins

    device = resolve_device(settings.device)
    model, transform, head = load_model(settings.model, device, settings.precision, settings.pooling)
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
                           batch_size=settings.batch_size, decode_workers=settings.decode_workers,
                           timeout_s=settings.decode_timeout_s, max_rss_mb=settings.max_rss_mb) if tasks else iter(())
    # (nothing left to do: no worker process is started)
    for task, video, error in stream:
        stamp = _stamp(Path(task.path))
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
    _barrier(world)
    if rank == 0:  # merge every rank's index into one set of outputs
        write_index_outputs(index_folder(out), out, model, settings.labels, settings.templates, settings.topk)
    _barrier(world)
    return TagSummary(len(paths), len(paths) - len(todo), ok, failed, time.perf_counter() - start, out)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun; a process group (gloo) is set up for the barriers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def read_indexes(folder: Path) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """The settings and all rows and embeddings of a tag index: one folder, or the rank-* folders of a sharded run
    (each resumable on its own), concatenated in rank order."""
    single = Index(folder)
    indexes = [single] if single.manifest_path.exists() else [
        Index(f) for f in sorted(folder.glob("rank-*")) if (f / "manifest.json").exists()]
    if not indexes:
        raise ValueError(f"{folder}: not a tag index (no manifest.json); pass the OUT.index folder tag wrote")
    rows: dict[str, list[dict]] = {"videos": [], "windows": [], "errors": []}
    videos, windows, settings = [], [], None
    for index in indexes:
        manifest = index.load()
        settings = {k: v for k, v in manifest["settings"].items() if k != "shard"}
        part_rows, v, w = index.read(manifest)
        offsets = {"videos": sum(len(x) for x in videos), "windows": sum(len(x) for x in windows)}
        for kind in rows:
            for r in part_rows[kind]:
                if kind in offsets:
                    r["emb"] += offsets[kind]
                rows[kind].append(r)
        videos.append(v)
        windows.append(w)
    return settings, rows, _concat(videos), _concat(windows)


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


def _index_model(settings: dict, device: str):
    spec, _, precision = settings["model"].rpartition("|")
    spec = spec.split("|")[0]
    return load_model(spec, resolve_device(device), precision)[0]


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
