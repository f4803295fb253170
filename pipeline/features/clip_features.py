"""Decoded clips -> per-view features (``model.video_text``: frame embeddings, or X-CLIP's clip rows), with temporal and
spatial views, for every job that needs video features; and cross-video batching of model-sized frames
(``CrossVideoBatcher``) for the streaming tag job."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.model.video_text import VideoTextModel
from pipeline.video.open import DecodeRequest, decode_in_workers
from pipeline.video.reader import DecodedClip
from pipeline.video.supervisor import Failure

from .encoders import BatchEncoder, LocalEncoder
from .frame_geometry import FrameGeometry


@dataclass(frozen=True)
class VideoFeatures:
    path: str
    features: torch.Tensor  # (V, L, E): V = temporal clips × spatial crops; L rows per view (VideoTextModel.encode)
    timestamps: np.ndarray  # (clips, T) seconds of the sampled frames
    warnings: tuple[str, ...] = ()


@torch.no_grad()
def encode_clip(model: VideoTextModel, clip: DecodedClip, *, crops: int = 1, batch_size: int = 32) -> torch.Tensor:
    """A decoded clip whose indices are (T,) or (clips, T) -> (clips·crops, L, E) float32 features on CPU: the T
    frame embeddings of each view, or X-CLIP's 1 + K rows (batches then hold whole clips)."""
    if crops not in (1, 3):
        raise ValueError(f"crops ({crops}) must be 1 (centre) or 3 (start, centre, end)")
    clips = clip.indices.reshape(-1, clip.indices.shape[-1]) if clip.indices.ndim else clip.indices.reshape(1, 1)
    n_clips, t = clips.shape
    step = max(batch_size // model.group, 1) * model.group  # whole clips per batch where frames go together
    geometry, out = FrameGeometry.of(model.preprocess), []  # the decode workers' resize: tag's inputs, byte for byte
    for start in range(0, clip.frames.shape[0], step):
        frames = clip.frames[start : start + step]  # (b, H, W, 3) uint8
        views = geometry.resize_three_crop(frames) if crops == 3 else geometry.resize_crop(frames)[None]
        x = model.transform.normalize(torch.from_numpy(views).flatten(0, 1).permute(0, 3, 1, 2))  # (crops·b, 3, S, S)
        rows = model.encode(x)  # (crops·b / group, ..., E)
        out.append(rows.view(crops, -1, *rows.shape[1:]))
    feats = torch.cat(out, dim=1)  # (crops, clips·T, E), or (crops, clips, 1 + K, E)
    return feats.reshape(crops, n_clips, -1, feats.shape[-1]).transpose(0, 1).reshape(n_clips * crops, -1,
                                                                                      feats.shape[-1])  # (V, L, E)


class CrossVideoBatcher:
    """Cross-video batching: uint8 frames (N, 3, S, S), already resized and cropped, from many owners go through the
    model in batches of ``batch_size`` frames whatever each owner's share. ``add`` queues an owner's frames;
    ``ready`` runs the full batches (all of them with ``flush``) and returns, in the order added, the owners whose
    frames are all encoded, as (key, its ``VideoTextModel.encode`` rows or None, its ``Failure`` or None). Where a model takes
    a clip's frames together (X-CLIP), an owner's frames are whole clips and a batch never splits one.

    ``encoder`` runs the batches (``encoders.encode_batch``: one owner's model error is its own alone): this
    process's model, or Ray actors (``RayEncoders``) holding up to ``encoder.capacity`` batches at once, so that
    ``ready`` returns while they encode and waits only when all of them are busy (or with ``flush``).
    """

    def __init__(self, model: VideoTextModel, batch_size: int, encoder: BatchEncoder | None = None):
        self.model, self.group = model, model.group
        self.batch_size = max(batch_size // self.group, 1) * self.group
        self.encoder = encoder or LocalEncoder(model)
        self._queue: deque[_Owned] = deque()
        self._under_way: deque[tuple[Any, list[_Owned]]] = deque()  # (handle, the owners of its pieces)
        self.queued_frames = 0  # added, not yet sent to the encoder

    def add(self, key: Any, frames: torch.Tensor) -> None:
        assert frames.shape[0] % self.group == 0, "an owner's frames are whole clips"
        self._queue.append(_Owned(key, frames))
        self.queued_frames += frames.shape[0]

    def drop(self, keep: Callable[[Any], bool]) -> None:
        """Forget queued owners whose key ``keep`` rejects (a video that failed, or whose attempt, or one of its time
        ranges, restarts on another backend); rows of theirs still being encoded are discarded when they come."""
        for owned in [o for o in self._queue if not keep(o.key)]:
            self._queue.remove(owned)
            self.queued_frames -= owned.frames.shape[0] - owned.fed

    def ready(self, flush: bool = False) -> list[tuple[Any, torch.Tensor | None, Failure | None]]:
        while self.queued_frames >= self.batch_size or (flush and self.queued_frames):
            if len(self._under_way) >= self.encoder.capacity:
                self._take(wait=True)
            self._submit_batch()
        while self._under_way and self._take(wait=flush):
            pass
        done = []
        while self._queue and self._queue[0].complete():
            owned = self._queue.popleft()
            done.append((owned.key, None if owned.failure else torch.cat(owned.parts), owned.failure))
        return done

    def _submit_batch(self) -> None:
        pieces, owners, room = [], [], self.batch_size
        for owned in self._queue:
            n = min(owned.frames.shape[0] - owned.fed, room)
            if n:
                pieces.append(owned.frames[owned.fed : owned.fed + n])
                owners.append(owned)
                owned.fed, owned.under_way = owned.fed + n, owned.under_way + 1
                self.queued_frames -= n
                room -= n
            if not room:
                break
        self._under_way.append((self.encoder.submit(pieces), owners))

    def _take(self, wait: bool) -> bool:
        """Take the oldest batch under way back if it is done (with ``wait``: once it is); whether it was taken."""
        handle, owners = self._under_way[0]
        pieces = self.encoder.result(handle, wait)
        if pieces is None:
            return False
        self._under_way.popleft()
        for owned, piece in zip(owners, pieces):
            owned.under_way -= 1
            if isinstance(piece, Failure):
                owned.failure = owned.failure or piece
            else:
                owned.parts.append(piece)
        return True


@dataclass(eq=False)
class _Owned:
    key: Any
    frames: torch.Tensor  # uint8 (N, 3, S, S)
    fed: int = 0  # frames sent to the encoder so far
    under_way: int = 0  # batches holding some of them, not yet taken back
    parts: list = field(default_factory=list)
    failure: Failure | None = None

    def complete(self) -> bool:
        return self.fed == self.frames.shape[0] and not self.under_way


def extract_features(model: VideoTextModel, requests: Sequence[DecodeRequest], *, crops: int = 1,
                     batch_size: int = 32, decode_workers: int = 2, timeout_s: float = 120.0,
                     ) -> Iterator[tuple[DecodeRequest, VideoFeatures | None, Failure | None]]:
    """Decode in supervised workers and encode in this process, yielding (request, features, failure) per video as
    each finishes; exactly one of features and failure is set."""
    workers = max(1, min(decode_workers, len(requests)))
    for request, outcome in decode_in_workers(list(requests), num_workers=workers, timeout_s=timeout_s):
        if outcome.status != "ok":
            yield request, None, outcome.failure
            continue
        clip: DecodedClip = outcome.result
        feats = encode_clip(model, clip, crops=crops, batch_size=batch_size)
        stamps = clip.timestamps.reshape(-1, clip.indices.shape[-1]) if clip.indices.ndim else clip.timestamps
        yield request, VideoFeatures(request.path, feats, stamps, clip.warnings), None
