"""One interface over every video-text model family, used by every job: what a family takes as input, what it keeps
per video (or window) to score later without decoding, and how it scores labels and search texts.

    frames, normalised (N, 3, S, S) --encode--> encoded rows --features--> (V, L, E) per-view features
        --state--> VideoState: (V, E) unit vectors [+ (V, K, E) prompt tokens]     what the tag index stores
        --LabelScorer.probs--> (V, C) probabilities                                 softmax or a sigmoid per label

    family                 encodes           features (L rows of E)               state
    clip, siglip, vificlip frame by frame    T raw frame embeddings               pooled: mean | max | temporal
    actionclip             frame by frame    T raw frame embeddings               its fusion transformer (temporal)
    openvclip, froster     T frames at once  T raw frame embeddings               mean of unit frame embeddings
    xclip                  T frames at once  its MIT video embedding + K tokens   unit video embedding + K tokens

Per-frame families share a frame between overlapping windows and can pool by any rule; X-CLIP's frames exchange
messages inside the vision transformer and Open-VCLIP's attend to their neighbours, so a window's T frames are
encoded together (X-CLIP: exactly T, the count its checkpoint was built for). X-CLIP's label texts are conditioned
on each video's tokens (the video-specific prompt generator) before they are compared. A family's protocol
(``clip_model.config.FAMILY_PROTOCOLS``: frames, templates, pooling, scoring, how templates and views combine) is its
default everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import clip_model
from clip_model.config import FAMILY_PROTOCOLS

from .pooling import pool_views
from .prompts import cached_class_embeddings, template_embeddings
from .state import VideoState
from .zero_shot import LabelScoring, label_scoring

XCLIP_ROWS = 64  # videos whose label texts are conditioned at once: (rows, C, E) floats stay ~50 MB at C = 400


class VideoTextModel:
    """A loaded model of any family behind one interface (see the module doc); ``head`` is a temporal pooler (one
    trained by train, or ActionCLIP's fusion transformer); ``recorded``: what the checkpoint recorded of its
    protocol (pooling, frames, templates), in place of the family's; ``pooling`` None takes the protocol's."""

    def __init__(self, model: clip_model.CLIP | clip_model.SigLIP, transform: clip_model.ClipTransform,
                 pooling: str | None = None, head: nn.Module | None = None, name: str = "model",
                 recorded: Mapping[str, Any] | None = None, frames: int | None = None):
        self.model, self.transform, self.head, self.name = model, transform, head, name
        self.family: str = model.family
        self.protocol = FAMILY_PROTOCOLS[self.family].recorded(recorded)
        self.templates: str | tuple[str, ...] = self.protocol.templates  # default templates: a set's name or them
        self.xclip = isinstance(model, clip_model.XCLIP)
        self.openvclip = isinstance(model, clip_model.OpenVCLIP)
        pooling = pooling or self.protocol.pooling
        if self.xclip and pooling != "mean":
            raise ValueError(f"{name}: X-CLIP pools a clip's frames with its own transformer (MIT); pooling "
                             f"{pooling!r} does not apply to it (leave --pooling out)")
        if pooling == "temporal" and head is None:
            raise ValueError(f"{name}: pooling temporal needs a checkpoint with a temporal pooler (written by train, "
                             "or ActionCLIP's); this one has none: use pooling mean")
        self.pooling = pooling
        # frames per clip or window: fixed by an X-CLIP checkpoint (its MIT has one position per frame), else any
        self.fixed_frames: int | None = model.num_frames if isinstance(model, clip_model.XCLIP) else None
        if self.fixed_frames is not None and frames not in (None, self.fixed_frames):
            raise ValueError(f"{name}: this X-CLIP checkpoint was built for {self.fixed_frames} frames per clip (its "
                             f"frame-integration transformer has {self.fixed_frames} positions); --num-frames "
                             f"{frames} cannot run on it: leave it out, or use a {frames}-frame checkpoint")
        self.frames: int = self.fixed_frames or frames or self.protocol.frames  # resolved once, here
        # frames that go through the model together: X-CLIP's fixed count; Open-VCLIP's clip length
        self.group = self.fixed_frames or (self.frames if self.openvclip else 1)
        scoring = label_scoring(model)
        self.scoring = scoring if self.protocol.scale is None else LabelScoring(scoring.kind, self.protocol.scale)

    @property
    def preprocess(self) -> clip_model.PreprocessConfig:
        return self.model.preprocess_config

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def token_count(self) -> int:
        """K, the visual tokens a state carries (0: none)."""
        if not isinstance(self.model, clip_model.XCLIP):
            return 0
        vision = self.model.config.vision
        assert vision.patch_size is not None  # X-CLIP is a ViT
        return (vision.image_size // vision.patch_size) ** 2

    def num_frames(self, asked: int | None) -> int:
        """The frames per clip or window to sample for ``asked`` (None: the model's, ``frames``). A model whose clip
        frames go through it together (X-CLIP, Open-VCLIP) was built for its count at load: another is refused in
        one line."""
        if asked is None or asked == self.frames:
            return self.frames
        if self.joint:
            raise ValueError(f"{self.name}: loaded for {self.frames} frames per clip, which {self.family} encodes "
                             f"together; {asked} cannot run on it (pass the count when the model is loaded)")
        return asked

    def check_clip_frames(self, frames: int | None) -> None:
        """Refuse a sampling of ``frames`` per clip (None: as many as the video has) where a clip's frames go
        through the model together in groups of another size."""
        if self.joint and frames != self.group:
            got = "every frame of the video" if frames is None else f"{frames} frame{'s' * (frames != 1)} per clip"
            raise ValueError(f"{self.name}: {self.family} encodes each clip's {self.group} frames together; a sampling "
                             f"of {got} (frames: centre or all) cannot run on it: sample {self.group} frames")

    # ---- frames -> features -> states -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (N, 3, S, S) -> float32 rows on CPU, in one model call: (N, E) frame embeddings, or for
        X-CLIP, whose N frames are N / T clips in a row, (N / T, 1 + K, E): each clip's MIT embedding and tokens.
        On a GPU: pinned host memory for an asynchronous copy, and fp16 autocast for fp32 weights."""
        device = next(self.model.parameters()).device
        cuda = device.type == "cuda"
        if cuda:
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda and self.model.dtype == torch.float32):
            if isinstance(self.model, clip_model.XCLIP):
                video, tokens = self.model.encode_video(x.view(-1, self.group, *x.shape[1:]))  # (B, E), (B, K, E)
                return torch.cat([video[:, None], tokens], dim=1).float().cpu()  # (B, 1 + K, E)
            if isinstance(self.model, clip_model.OpenVCLIP):  # (B, T, E) -> (N, E): frames seen with neighbours
                return self.model.encode_video(x.view(-1, self.group, *x.shape[1:])).flatten(0, 1).float().cpu()
            return self.model.encode_image(x).float().cpu()  # (N, E)

    def state(self, features: torch.Tensor) -> VideoState:
        """(V, L, E) features of V views (or windows) -> their states."""
        if self.xclip:
            return VideoState(F.normalize(features[:, 0], dim=-1), features[:, 1:])
        return VideoState(pool_views(features, self.pooling, self.head))

    @property
    def rows_per_group(self) -> int:
        """Rows ``encode`` returns per group of frames: one per clip for X-CLIP, one per frame otherwise."""
        return 1 if self.xclip else self.group

    @property
    def joint(self) -> bool:
        """Whether a clip's frames are encoded together (X-CLIP, Open-VCLIP), so windows cannot share frames."""
        return self.group > 1

    def window_frames(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A chunk's distinct frames (U, 3, S, S) and its windows' (w, T) positions -> the frames to encode: the
        distinct ones (shared by overlapping windows), or where a clip's frames go together each window's T frames
        in a row (w·T, ...)."""
        return frames[positions.reshape(-1)] if self.joint else frames

    def window_features(self, encoded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``encode``'s rows for ``window_frames`` -> (w, L, E) per-window features."""
        if self.xclip:
            return encoded
        return encoded.view(*positions.shape, -1) if self.joint else encoded[positions]

    def probe_feature(self, features: torch.Tensor) -> torch.Tensor:
        """(V, L, E) views -> (E,) unit vector, the feature a linear probe is trained and applied on: each view's
        embedding (mean-pooled, or by the trained temporal pooler; X-CLIP's own), averaged, renormalised."""
        if self.xclip or self.pooling == "mean_of_unit":
            return self.state(features).mean().vectors[0]
        views = pool_views(features, "mean" if self.head is None else "temporal", self.head)  # (V, E)
        return F.normalize(views.mean(dim=0), dim=-1)

    # ---- texts ------------------------------------------------------------------------------------------------------

    def class_text(self, classnames: Sequence[str], templates: Sequence[str], cache_dir: Path | None = None,
                   model_key: str = "") -> torch.Tensor:
        """(C, E) float32 label texts, prompt-ensembled (see ``prompts``): unit vectors; for X-CLIP unnormalised (the
        mean of each label's prompt embeddings), which its prompt generator conditions on each video; for families
        that average probabilities over templates (ActionCLIP) (K, C, E), one unit vector per template. With
        ``cache_dir``, cached there under ``model_key`` (``loading.model_key``)."""
        if self.protocol.template_ensemble == "probabilities":
            return template_embeddings(self.model, classnames, templates).float().cpu()
        text = cached_class_embeddings(self.model, model_key, classnames, templates, cache_dir,
                                       normalize=not self.xclip)
        return text.float().cpu()

    def labels(self, text: torch.Tensor) -> LabelScorer:
        """``class_text``'s (C, E) label texts, ready to score states with this model's scoring."""
        return LabelScorer(text, self.scoring, self.model if isinstance(self.model, clip_model.XCLIP) else None)

    @torch.no_grad()
    def query(self, text: str) -> np.ndarray:
        """(E,) float32 unit vector of a search text, as the stored vectors are compared with it (X-CLIP: before its
        prompt generator, which ``LabelScorer`` applies when it re-ranks)."""
        tokens = self.model.tokenize([text]).to(next(self.model.parameters()).device)
        return F.normalize(self.model.encode_text(tokens).float().cpu(), dim=-1)[0].numpy()

    def view_probs(self, features: torch.Tensor, scorer: LabelScorer) -> torch.Tensor:
        """(V, L, E) views -> (C,) probabilities, averaged over the views (X-CLIP's multi-view protocol too), or
        for Open-VCLIP's families the softmax of the views' summed logits. Pooling ``frame_scores`` (per-frame
        families) scores every frame and averages the probabilities instead."""
        if self.pooling == "frame_scores":
            frames = F.normalize(features.flatten(0, 1), dim=-1)  # (V·T, E)
            return scorer.probs(VideoState(frames)).mean(dim=0)
        state = self.state(features)
        if self.protocol.view_ensemble == "logits":
            return scorer.logits(state).sum(dim=0).softmax(dim=-1)
        return scorer.probs(state).mean(dim=0)


class LabelScorer:
    """Label texts ready to score states: ``cosines``, ``logits`` and ``probs``, (N, C) each, with a family's scoring
    (``xclip``: the X-CLIP model whose prompt generator conditions the texts on each state's tokens)."""

    def __init__(self, text: torch.Tensor, scoring: LabelScoring, xclip: clip_model.XCLIP | None = None):
        self.text, self.scoring, self.xclip = text, scoring, xclip  # (C, E)

    @property
    def kind(self) -> str:
        return self.scoring.kind

    @torch.no_grad()
    def cosines(self, state: VideoState) -> torch.Tensor:
        """(N, C) float32 cosines of the states' vectors and the label texts (for X-CLIP, as conditioned on each;
        with one text per template (K, C, E), their mean over the templates)."""
        if self.text.ndim == 3:
            return torch.einsum("ne,kce->nc", state.vectors.float(), self.text) / self.text.shape[0]
        if self.xclip is None:
            return state.vectors.float() @ self.text.t()
        assert state.tokens is not None, "X-CLIP states carry their tokens"
        p = next(self.xclip.parameters())
        out = []
        for start in range(0, len(state), XCLIP_ROWS):
            part = state.rows(start, start + XCLIP_ROWS)
            assert part.tokens is not None
            text = self.xclip.condition_text(part.tokens.to(p.device, p.dtype), self.text.to(p.device, p.dtype))
            out.append(torch.einsum("be,bce->bc", part.vectors.float().to(p.device),
                                    F.normalize(text.float(), dim=-1)).cpu())  # (n, C)
        return torch.cat(out) if out else torch.zeros(0, self.text.shape[0])

    def logits(self, state: VideoState) -> torch.Tensor:
        return self.scoring.scale * self.cosines(state) + self.scoring.bias

    def probs(self, state: VideoState) -> torch.Tensor:
        """(N, C): softmax over the labels, or each label's own sigmoid; with one text per template, each
        template's probabilities averaged (ActionCLIP's test)."""
        if self.text.ndim == 3:
            cos = torch.einsum("ne,kce->knc", state.vectors.float(), self.text)  # (K, N, C)
            return self.scoring.probs(cos).mean(dim=0)
        return self.scoring.probs(self.cosines(state))
