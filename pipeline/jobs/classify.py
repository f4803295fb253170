"""The classify job: videos in, one top-k prediction (or one recorded error) per video out."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_model.errors import UserError
from datasets.labels import check_unique_labels
from pipeline.eval.linear_probe import LinearProbe, check_fitted_on
from pipeline.features.clip_features import extract_features
from pipeline.features.frame_geometry import decode_cap
from pipeline.jobs.progress import progress as progress_bar
from pipeline.model.loading import load_model, model_identity, model_key
from pipeline.model.prompts import load_templates
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings, check_frame_choice, resolve_device
from pipeline.model.zero_shot import Prediction, top_k
from pipeline.video.open import DecodeRequest
from pipeline.video.reader import VideoDecodeError, check_file
from pipeline.video.samplers import FrameChoice, Sampling


@dataclass(frozen=True)
class ClassifySettings:
    runtime: RuntimeSettings
    classnames: tuple[str, ...]
    overrides: ProtocolOverrides = ProtocolOverrides()  # templates, frames per clip, pooling; None: the model's
    clips: int = 1  # temporal views: > 1 takes evenly spread dense clips of num_frames consecutive frames
    crops: int = 1  # spatial views: 1 (centre) or 3
    topk: int = 5
    unknown_below: float | None = None  # open set: answer "unknown" when the top probability is below this
    cache_dir: Path | None = None  # text-feature cache; None disables it
    probe: LinearProbe | None = None  # a saved one (LinearProbe.load): classify with it, not zero-shot (its classes win)
    prescale: bool = False  # scale large frames down in the decoder first (frame_geometry.decode_cap): faster, not
    #                         the references' single resize
    sampling: FrameChoice = "exact"  # keyframes: the keyframes nearest the sampled frames (a video with fewer than
    #                                   it samples is decoded exactly, with a warning)

    def __post_init__(self) -> None:
        check_unique_labels(self.classnames)
        for name in ("clips", "topk"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.crops not in (1, 3):
            raise UserError(f"crops ({self.crops}) must be 1 or 3")
        if self.unknown_below is not None and not 0 < self.unknown_below < 1:
            raise UserError(f"--unknown-below {self.unknown_below}: must lie in (0, 1)")
        check_frame_choice(self.sampling)
        if not self.classnames and self.probe is None:
            raise UserError("classnames must not be empty")


UNKNOWN = "unknown"


@dataclass(frozen=True)
class VideoResult:
    path: Path
    prediction: Prediction | None
    error: str | None = None  # why it failed, without the path: "no such file", "timeout: ..."
    probs: torch.Tensor | None = None  # (C,) averaged over views: softmax over the labels, or each label's sigmoid
    warnings: tuple[str, ...] = ()
    unknown: bool = False  # open set: no label reached unknown_below, so the answer is "unknown" (labels kept as they are)

    @property
    def answer(self) -> str | None:
        return None if self.prediction is None else UNKNOWN if self.unknown else self.prediction.labels[0]


def classify_videos(settings: ClassifySettings, paths: Sequence[str | Path]) -> list[VideoResult]:
    """Zero-shot classify each video: sampled frames (and views) embedded, pooled over time, scored against
    prompt-ensembled labels; a video that fails to decode gets an error instead of a prediction."""
    rt = settings.runtime
    results: dict[str, VideoResult] = {}
    for p in paths:  # what is no video file at all is said before the model loads (and none loads if nothing is left)
        try:
            check_file(p)
        except VideoDecodeError as e:
            results[str(p)] = VideoResult(Path(p), None, e.reason)
    paths_left = [p for p in paths if str(p) not in results]
    if not paths_left:
        return [results[str(p)] for p in paths]
    probe = settings.probe
    if probe is not None:  # its features' model, pooling and frames, unless asked otherwise
        check_fitted_on(probe, rt.model)
    recorded = probe.fitted_on if probe is not None else {}
    asked = settings.overrides
    model = load_model(rt.model, resolve_device(rt.device), rt.precision, asked.pooling or recorded.get("pooling"),
                       asked.num_frames or recorded.get("num_frames"))
    num_frames = model.frames
    if probe is not None and probe.coef.shape[1] != model.embed_dim:  # a probe saved before fitted_on was recorded
        raise UserError(f"{probe.source}: this probe takes {probe.coef.shape[1]}-dimensional features; {rt.model} "
                         f"gives {model.embed_dim}: pass the --model it was fitted on")
    classnames = list(probe.classnames) if probe else list(settings.classnames)
    if probe is None:  # CLIP: softmax over the labels; SigLIP: a sigmoid per label; X-CLIP: texts seen by each video
        labels = model.labels(model.class_text(classnames, load_templates(asked.templates or model.templates),
                                               settings.cache_dir, model_key(model_identity(rt.model, rt.precision))))
    cap = decode_cap(model.preprocess, settings.prescale)
    requests = [DecodeRequest(str(p), Sampling.views(num_frames, settings.clips), rt.backend, cap,
                              frame_choice=settings.sampling) for p in paths_left]
    stream = extract_features(model, requests, crops=settings.crops, batch_size=rt.batch_size,
                              decode_workers=rt.decode_workers, timeout_s=rt.decode_timeout_s)
    bar = progress_bar(len(requests), desc="classify", unit="video")
    for request, feats, failure in stream:
        bar.update()
        if failure is not None:  # "no such file"; a timeout or crash says so
            reason = failure.reason if failure.status == "error" else f"{failure.status}: {failure.reason}"
            results[request.path] = VideoResult(Path(request.path), None, reason)
            continue
        assert feats is not None  # extract_features sets exactly one of features and failure
        if probe is not None:
            probs = torch.from_numpy(probe.predict_proba(model.probe_feature(feats.features).numpy()[None])[0])
        else:
            probs = model.view_probs(feats.features, labels)  # (C,)
        (pred,) = top_k(probs[None], classnames, settings.topk)
        unknown = settings.unknown_below is not None and pred.scores[0] < settings.unknown_below
        results[request.path] = VideoResult(Path(request.path), pred, probs=probs, warnings=feats.warnings,
                                            unknown=unknown)
    bar.close()
    return [results[str(p)] for p in paths]
