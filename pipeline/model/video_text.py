"""One interface over every video-text model family, used by every job: what a family takes as input, what it keeps
per video (or window) to score later without decoding, and how it scores labels and search texts.

    frames, normalised (N, 3, S, S) --encode--> encoded rows --features--> (V, L, E) per-view features
        --state--> VideoState: (V, E) unit vectors [+ (V, K, E) prompt tokens]     what the tag index stores
        --LabelScorer.probs--> (V, C) probabilities                                 softmax or a sigmoid per label

``VideoTextModel`` is a composition: the model, its family's protocol (``families.FAMILIES``, the one place a
family name is looked up), a visual strategy (``visual``: per frame, neighbour frames, whole clips) and a scorer
class (``scorers``: plain embeddings, a per-template softmax ensemble, video-conditioned texts), both chosen by
the protocol. The frames per clip are resolved once, at construction.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import clip_model
from clip_model.errors import UserError

from .families import POOLINGS, Pooling, family, recorded_templates
from .scorers import SCORERS, LabelScorer, VideoState, probability_rule
from .visual import VISUALS, pool_views


class VideoTextModel:
    """A loaded model of any family behind one interface (see the module doc); ``head`` is a temporal pooler (one
    trained by train, or ActionCLIP's fusion transformer); ``recorded``: what the checkpoint recorded of its
    protocol (pooling, frames, templates), in place of the family's; ``pooling`` None takes the protocol's."""

    def __init__(self, model: clip_model.CLIP | clip_model.SigLIP, transform: clip_model.ClipTransform,
                 pooling: str | None = None, head: nn.Module | None = None, name: str = "model",
                 recorded: Mapping[str, Any] | None = None, frames: int | None = None):
        self.model, self.transform, self.head, self.name = model, transform, head, name
        self.family: str = model.family
        self.protocol = family(self.family).recorded(recorded)
        self.templates: str | tuple[str, ...] = recorded_templates(self.protocol, recorded)  # a set's name, or them
        self.visual = VISUALS[self.protocol.visual](model, name, frames, self.protocol.frames)
        pooling = pooling or self.protocol.pooling
        if pooling not in POOLINGS:  # what a checkpoint recorded is read from a file
            raise UserError(f"{name}: pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.visual.check_pooling(name, pooling)
        if pooling == "temporal" and head is None:
            raise UserError(f"{name}: pooling temporal needs a checkpoint with a temporal pooler (written by train, "
                             "or ActionCLIP's); this one has none: use pooling mean")
        self.pooling = cast(Pooling, pooling)
        self.frames: int = self.visual.frames  # frames per clip or window, resolved once, here
        self.scorer = SCORERS[self.protocol.text]
        self.scoring = probability_rule(model, self.protocol)

    @property
    def preprocess(self) -> clip_model.PreprocessConfig:
        return self.model.preprocess_config

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def token_count(self) -> int:
        """K, the visual tokens a state carries (0: none)."""
        return self.visual.token_count

    @property
    def group(self) -> int:
        """Frames that go through the model together: 1, or a clip's (X-CLIP's fixed count; Open-VCLIP's length)."""
        return self.visual.group

    @property
    def joint(self) -> bool:
        """Whether a clip's frames are encoded together (X-CLIP, Open-VCLIP), so windows cannot share frames."""
        return self.visual.joint

    @property
    def rows_per_group(self) -> int:
        """Rows ``encode`` returns per group of frames: one per clip for X-CLIP, one per frame otherwise."""
        return self.visual.rows_per_group

    @property
    def reranks_search(self) -> bool:
        """Whether a text search re-ranks its nearest candidates with the state-conditioned texts (X-CLIP)."""
        return self.scorer.conditioned

    def num_frames(self, asked: int | None) -> int:
        """The frames per clip or window to sample for ``asked`` (None: the model's, ``frames``). A model whose clip
        frames go through it together (X-CLIP, Open-VCLIP) was built for its count at load: another is refused in
        one line."""
        if asked is None or asked == self.frames:
            return self.frames
        if self.joint:
            raise UserError(f"{self.name}: loaded for {self.frames} frames per clip, which {self.family} encodes "
                             f"together; {asked} cannot run on it (pass the count when the model is loaded)")
        return asked

    def check_clip_frames(self, frames: int | None) -> None:
        """Refuse a sampling of ``frames`` per clip (None: as many as the video has) where a clip's frames go
        through the model together in groups of another size."""
        if self.joint and frames != self.group:
            got = "every frame of the video" if frames is None else f"{frames} frame{'s' * (frames != 1)} per clip"
            raise UserError(f"{self.name}: {self.family} encodes each clip's {self.group} frames together; a sampling "
                             f"of {got} (frames: centre or all) cannot run on it: sample {self.group} frames")

    # ---- frames -> features -> states -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (N, 3, S, S) -> float32 rows on CPU, in one model call (``visual``): (N, E) frame
        embeddings, or for X-CLIP, whose N frames are N / T clips in a row, (N / T, 1 + K, E): each clip's MIT
        embedding and tokens.
        On a GPU: pinned host memory for an asynchronous copy, and fp16 autocast for fp32 weights."""
        device = next(self.model.parameters()).device
        cuda = device.type == "cuda"
        if cuda:
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda and self.model.dtype == torch.float32):
            return self.visual.encode(x).float().cpu()

    def state(self, features: torch.Tensor) -> VideoState:
        """(V, L, E) features of V views (or windows) -> their states."""
        return self.visual.state(features, self.pooling, self.head)

    def window_frames(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A chunk's distinct frames (U, 3, S, S) and its windows' (w, T) positions -> the frames to encode: the
        distinct ones (shared by overlapping windows), or where a clip's frames go together each window's T frames
        in a row (w·T, ...)."""
        return self.visual.window_frames(frames, positions)

    def window_features(self, encoded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``encode``'s rows for ``window_frames`` -> (w, L, E) per-window features."""
        return self.visual.window_features(encoded, positions)

    def probe_feature(self, features: torch.Tensor) -> torch.Tensor:
        """(V, L, E) views -> (E,) unit vector, the feature a linear probe is trained and applied on: each view's
        embedding (mean-pooled, or by the trained temporal pooler; X-CLIP's own), averaged, renormalised."""
        if not self.visual.pools or self.pooling == "mean_of_unit":
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
        return self.scorer.label_texts(self.model, classnames, templates, cache_dir, model_key).float().cpu()

    def labels(self, text: torch.Tensor) -> LabelScorer:
        """``class_text``'s label texts, ready to score states with this model's scoring."""
        return self.scorer(text, self.scoring, self.model)

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
