"""The per-video features every benchmark protocol reads: the config's sampling, decoded and embedded once per
video and cached on disk (keyed by model, sampling and the file's size and mtime), so a second protocol or split over
the same videos decodes nothing."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_model import cache_dir as default_cache_dir
from clip_model.errors import UserError
from configs.schema import BenchmarkConfig
from datasets.records import VideoRecord
from pipeline.features.clip_features import extract_features
from pipeline.features.frame_geometry import decode_cap
from pipeline.jobs.progress import progress as progress_bar
from pipeline.model.loading import load_model, model_identity, model_key
from pipeline.model.runtime import resolve_device
from pipeline.model.tensor_cache import load_tensor, save_tensor
from pipeline.model.video_text import VideoTextModel
from pipeline.video.open import DecodeRequest
from pipeline.video.samplers import Sampling
from pipeline.video.supervisor import Failure


def sampling_for(cfg: BenchmarkConfig, num_frames: int) -> Sampling:
    """The config's sampling, with ``num_frames`` (the config's, checked against the model's) per clip."""
    if cfg.frames == "centre":
        return Sampling("segments", num_frames=1)
    if cfg.frames == "all":
        return Sampling("all")
    return Sampling.views(num_frames, cfg.clips, cfg.frame_interval)


class FeatureCache:
    """Per-view features (V, L, E) per video on disk, keyed by model, sampling, crops and the file's size/mtime."""

    def __init__(self, root: Path | None, key: str):
        self.root, self.key = root, key

    def _path(self, video: Path) -> Path | None:
        if self.root is None:
            return None
        st = video.stat()
        digest = hashlib.sha256(f"{self.key}|{video.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest[:32]}.pt"

    def get(self, video: Path) -> torch.Tensor | None:
        path = self._path(video)
        return None if path is None else load_tensor(path)

    def put(self, video: Path, features: torch.Tensor) -> None:
        path = self._path(video)
        if path is not None:
            save_tensor(path, features)


def video_features(records: tuple[VideoRecord, ...], model: VideoTextModel, sampling: Sampling, cfg: BenchmarkConfig,
                   cache: FeatureCache, desc: str) -> tuple[dict[Path, torch.Tensor], dict[Path, Failure]]:
    """(V, L, E) features for each record's video, from the cache or decoded now; failures by path."""
    feats: dict[Path, torch.Tensor] = {}
    todo = []
    for r in records:
        hit = cache.get(r.path)
        if hit is not None:
            feats[r.path] = hit
        else:
            todo.append(r)
    cap = decode_cap(model.preprocess, cfg.prescale)
    rt = cfg.runtime
    requests = [DecodeRequest(str(r.path), sampling, rt.backend, cap) for r in todo]
    errors: dict[Path, Failure] = {}
    with progress_bar(len(records), initial=len(feats), desc=desc, unit="video") as bar:
        for request, result, failure in extract_features(model, requests, crops=cfg.crops,
                                                       batch_size=rt.batch_size, decode_workers=rt.decode_workers,
                                                       timeout_s=rt.decode_timeout_s):
            path = Path(request.path)
            if failure is not None:
                errors[path] = failure
            else:
                assert result is not None  # extract_features sets exactly one of features and failure
                feats[path] = result.features
                cache.put(path, result.features)
            bar.update()
    return feats, errors


@dataclass(frozen=True)
class BenchmarkModel:
    """What every protocol sets up from its config before it reads a video: the model, its key, the cache folder,
    the sampling (checked against the model) and the per-video feature cache."""

    model: VideoTextModel
    key: str  # loading.model_key of the model's identity: what caches are keyed by
    cache_root: Path
    sampling: Sampling
    cache: FeatureCache


def load_benchmark_model(cfg: BenchmarkConfig) -> BenchmarkModel:
    rt, asked = cfg.runtime, cfg.overrides
    model = load_model(rt.model, resolve_device(rt.device), rt.precision, asked.pooling, asked.num_frames)
    mkey = model_key(model_identity(rt.model, rt.precision))
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "features"
    sampling = sampling_for(cfg, model.frames)
    model.check_clip_frames(sampling.clip_frames)
    cache = FeatureCache(cache_root / "video", f"{mkey}|{sampling}|crops={cfg.crops}" + "|prescale" * cfg.prescale)
    return BenchmarkModel(model, mkey, cache_root, sampling, cache)


def check_found(name: str, missing: Sequence[Path], found: int, root: str, skip_missing: bool) -> None:
    """Refuse annotated videos the disk lacks (unless ``skip_missing``) and a dataset with none found."""
    if missing and not skip_missing:
        raise UserError(f"{name}: {len(missing)} annotated videos are missing, e.g. {missing[0]}; "
                         "fix dataset.root or set dataset.skip_missing=true to skip them")
    if not found:
        raise UserError(f"{name}: no videos found under {root}")


ERROR_COLUMNS = ["split", "path", "stage", "reason"]  # errors.csv


def failure_rows(split: str, errors: dict[Path, Failure], missing: Sequence[Path]) -> list[dict]:
    """errors.csv's rows of a split: the videos that failed to decode, then the annotated ones that are missing."""
    return ([{"split": split, "path": str(p), "stage": "decode", "reason": f"{e.status}: {e.reason}"}
             for p, e in errors.items()]
            + [{"split": split, "path": str(p), "stage": "missing", "reason": "file not found"} for p in missing])
