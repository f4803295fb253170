"""The visual side of a family, as one of three strategies with one contract (``families.Visual`` picks it):

    strategy          group (frames in)   rows out per group    features (L rows of E)        state
    FrameVisual       1                   1 (its embedding)     T raw frame embeddings        pooled by a rule
    NeighbourVisual   T (fixed at load)   T (one per frame)     T raw frame embeddings        pooled by a rule
    ClipVisual        T (the checkpoint)  1 (1 + K rows)        its video embedding + K tokens unit vector + tokens

Per-frame families share a frame between overlapping windows and can pool by any rule; Open-VCLIP's frames attend
to their neighbours and X-CLIP's exchange messages inside the vision transformer, so a window's T frames are
encoded together (X-CLIP: exactly the T its checkpoint was built for).

The rules that pool frame embeddings over time come first: ``mean`` and ``max`` ignore frame order, so an action and
its time reversal (moving left / moving right) pool to the same vector; ``temporal`` runs a trained
``TemporalTransformer`` (stored in checkpoints written by ``train``) that sees the order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from clip_model.errors import UserError

from .families import Visual
from .scorers import VideoState

if TYPE_CHECKING:
    import clip_model


def mean_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: average, then L2-normalise (as ViFi-CLIP)."""
    return F.normalize(frame_features.mean(dim=-2), dim=-1)


def max_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(..., T, E) raw frame embeddings -> (..., E) unit vectors: element-wise max over time, then L2-normalise."""
    return F.normalize(frame_features.max(dim=-2).values, dim=-1)


@torch.no_grad()
def temporal_pool(frame_features: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """(V, T, E) raw frame embeddings -> (V, E) unit vectors through a trained temporal pooler."""
    p = next(head.parameters())
    return F.normalize(head(frame_features.to(p.device, p.dtype)).float().cpu(), dim=-1)


def pool_views(frame_features: torch.Tensor, pooling: str, head: nn.Module | None = None) -> torch.Tensor:
    """(V, T, E) raw frame embeddings -> (V, E) unit vectors by ``mean``, ``max`` or ``temporal`` (needs ``head``);
    ``mean_of_unit`` (Open-VCLIP's mean of per-frame logits): the mean of the unit frame embeddings, not
    renormalised."""
    if pooling == "mean_of_unit":
        return F.normalize(frame_features, dim=-1).mean(dim=-2)
    if pooling == "temporal":
        if head is None:
            raise UserError("temporal pooling needs a trained temporal pooler (a checkpoint written by train)")
        return temporal_pool(frame_features, head)
    if pooling == "mean":
        return mean_pool(frame_features)
    if pooling == "max":
        return max_pool(frame_features)
    raise UserError(f"pooling {pooling!r}: choose mean, max, temporal or mean_of_unit")


class FrameVisual:
    """Each frame through the image tower alone."""

    pools = True  # whether frame rows pool into a video by a rule (mean, max, temporal, ...)
    rows_per_group = 1
    token_count = 0  # K, the visual tokens a state carries

    def __init__(self, model: clip_model.FrameTextModel, name: str, asked: int | None, default: int):
        """``asked`` frames per clip (None: ``default``, the family's or the checkpoint's recorded count)."""
        self.model, self.frames, self.group = model, asked or default, 1

    @property
    def joint(self) -> bool:
        """Whether a clip's frames go through the model together, so windows cannot share frames."""
        return self.group > 1

    def check_pooling(self, name: str, pooling: str) -> None:
        """Refuse a pooling this strategy cannot run (in one line naming the model)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, S, S) on the model's device -> (N, E) frame embeddings."""
        return self.model.encode_image(x)

    def window_frames(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A chunk's distinct frames (U, 3, S, S) and its windows' (w, T) positions -> the frames to encode: the
        distinct ones, shared by overlapping windows."""
        return frames

    def window_features(self, encoded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``encode``'s rows of ``window_frames`` -> (w, T, E) per-window features."""
        return encoded[positions]

    def state(self, features: torch.Tensor, pooling: str, head: nn.Module | None) -> VideoState:
        """(V, L, E) features of V views (or windows) -> their states."""
        return VideoState(pool_views(features, pooling, head))


class NeighbourVisual(FrameVisual):
    """A clip's T frames through the model together, each attending to its neighbours (Open-VCLIP, FROSTER): T is
    the clip length chosen at load."""

    def __init__(self, model: clip_model.FrameTextModel, name: str, asked: int | None, default: int):
        super().__init__(model, name, asked, default)
        self.group = self.frames

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B·T, 3, S, S) -> (B·T, E): frames seen with their neighbours in their clip."""
        video = cast("clip_model.OpenVCLIP", self.model)
        return video.encode_clip_frames(x.view(-1, self.group, *x.shape[1:])).flatten(0, 1)  # (B, T, E) -> (B·T, E)

    def window_frames(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return frames[positions.reshape(-1)]  # (w·T, 3, S, S): each window's frames in a row

    def window_features(self, encoded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return encoded.view(*positions.shape, -1)  # (w, T, E)


class ClipVisual(NeighbourVisual):
    """A clip's frames through a video encoder (X-CLIP: cross-frame attention, then its multi-frame integration
    transformer), giving one video embedding and K visual tokens per clip; the clip length is the checkpoint's."""

    pools = False
    rows_per_group = 1

    def __init__(self, model: clip_model.FrameTextModel, name: str, asked: int | None, default: int):
        video = cast("clip_model.XCLIP", model)
        built = video.num_frames
        if asked not in (None, built):
            raise UserError(f"{name}: this X-CLIP checkpoint was built for {built} frames per clip (its "
                             f"frame-integration transformer has {built} positions); --num-frames {asked} cannot "
                             f"run on it: leave it out, or use a {asked}-frame checkpoint")
        super().__init__(model, name, built, built)
        vision = video.config.vision
        assert vision.patch_size is not None  # X-CLIP is a ViT
        self.token_count = (vision.image_size // vision.patch_size) ** 2

    def check_pooling(self, name: str, pooling: str) -> None:
        if pooling != "mean":
            raise UserError(f"{name}: X-CLIP pools a clip's frames with its own transformer (MIT); pooling "
                             f"{pooling!r} does not apply to it (leave --pooling out)")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B·T, 3, S, S) -> (B, 1 + K, E): each clip's video embedding and its tokens."""
        video, tokens = cast("clip_model.XCLIP", self.model).encode_video_tokens(x.view(-1, self.group, *x.shape[1:]))
        return torch.cat([video[:, None], tokens], dim=1)  # (B, E), (B, K, E) -> (B, 1 + K, E)

    def window_features(self, encoded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return encoded  # (w, 1 + K, E)

    def state(self, features: torch.Tensor, pooling: str, head: nn.Module | None) -> VideoState:
        return VideoState(F.normalize(features[:, 0], dim=-1), features[:, 1:])


VISUALS: dict[Visual, type[FrameVisual]] = {"frames": FrameVisual, "neighbour_frames": NeighbourVisual,
                                            "clips": ClipVisual}

