"""A part: the rows of the videos tagged since the last commit, in the index's columns, with their labels scored
once for the whole part."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.features.windows import WindowedVideo
from pipeline.model.scorers import VideoState
from pipeline.video.supervisor import Failure

from .index import TagIndex
from .index_state import VIDEO_COLUMNS, embedding_schema, stored_name
from .outputs import TopLabels


@dataclass
class Part:
    """The rows of the videos finished since the last commit, in the index's columns. Labels are scored once per
    part, in one batch: the top-k of each video and the top label of each window, as they were when tagged."""

    scorer: TopLabels
    dim: int
    token_count: int = 0  # K: X-CLIP's tokens per row (0: none)
    videos: list[dict] = field(default_factory=list)
    embeddings: list[dict] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # (1 + W, E) float32 per video: the video, its windows
    tokens: list[np.ndarray] = field(default_factory=list)  # (1 + W, K, E) per video, where K > 0

    def __len__(self) -> int:
        return len(self.videos)

    def add_video(self, video_id: int, path: str, stamp: tuple | None, video: WindowedVideo) -> None:
        state = VideoState.cat([video.windows.mean(), video.windows])  # (1 + W, ...): the video, then its windows
        self.add(video_row(video_id, path, stamp, "ok") | {
            "duration_s": round(video.info.duration, 3), "decoder": video.info.backend, "windows": len(video.windows),
            "warnings": " | ".join(video.warnings), "poster": video.poster}, state.vectors.float().numpy(),
            video.bounds, None if state.tokens is None else state.tokens.float().numpy(), video.frame_s)

    def add(self, row: dict, vectors: np.ndarray, bounds: Sequence[tuple[float, float]],
            tokens: np.ndarray | None = None, frame_s: np.ndarray | None = None) -> None:
        """A tagged video's row, its (1 + W, E) embeddings (the video, then its windows; X-CLIP's (1 + W, K, E)
        tokens too), its windows' spans and, if known, the (W, T) seconds of their frames."""
        if (tokens is None) != (self.token_count == 0):
            raise ValueError(f"{row['path']}: tokens must come with every row of an index that stores them, and only then")
        self.videos.append(row)
        self.vectors.append(vectors)
        if tokens is not None:
            self.tokens.append(tokens)
        spans = [(0.0, row["duration_s"])] + [(round(s, 3), round(e, 3)) for s, e in bounds]
        times = [None] + (np.round(frame_s, 4).tolist() if frame_s is not None else [None] * len(bounds))
        self.embeddings += [{"video_id": row["video_id"], "path": row["path"], "kind": "video" if k == 0 else "segment",
                             "window": k - 1, "start_s": start, "end_s": end, "frame_s": t}
                            for k, ((start, end), t) in enumerate(zip(spans, times))]

    def add_failure(self, video_id: int, path: str, stamp: tuple | None, failure: Failure) -> None:
        self.videos.append(video_row(video_id, path, stamp, failure.status) | {"stage": failure.stage,
                                                                               "reason": failure.reason})

    def tables(self) -> tuple[pa.Table, pa.Table]:
        """(videos, embeddings) as Arrow tables; the part's labels are scored here."""
        vecs = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.dim), np.float32)  # (R, E)
        toks = None
        if self.token_count:
            toks = np.concatenate(self.tokens) if self.tokens else np.zeros((0, self.token_count, self.dim), np.float32)
        labels, scores, _ = self.scorer.top(vecs, toks)  # (R, k) each
        for row, label, score in zip(self.embeddings, labels[:, 0].tolist(), scores[:, 0].tolist()):
            row["label"], row["score"] = label, score
        first = iter(np.flatnonzero([e["kind"] == "video" for e in self.embeddings]).tolist())
        for row in self.videos:
            if row["status"] == "ok":  # videos and their "video" rows are in the same order
                j = next(first)
                row["labels"], row["scores"] = labels[j].tolist(), scores[j].astype(np.float32).tolist()
        schema = embedding_schema(self.dim, self.token_count)
        emb = pa.Table.from_pylist(self.embeddings, schema=pa.schema([f for f in schema if f.name not in
                                                                      ("vector", "tokens")]))
        emb = emb.append_column("vector", _fixed_rows(vecs, self.dim))
        if toks is not None:
            emb = emb.append_column("tokens", _fixed_rows(toks, self.token_count * self.dim))
        return pa.Table.from_pylist(self.videos, schema=VIDEO_COLUMNS), emb

    def clear(self) -> None:
        self.videos.clear()
        self.embeddings.clear()
        self.vectors.clear()
        self.tokens.clear()


def _fixed_rows(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(R, ...) floats -> R fixed-size float16 lists of ``width``."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float16).reshape(-1)), width)


def video_row(video_id: int, path: str, stamp: tuple | None, status: str) -> dict:
    size, mtime = stamp if stamp is not None else (None, None)
    return {"video_id": video_id, "path": stored_name(path), "size": size, "mtime_ns": mtime, "status": status}


def next_video_id(index: TagIndex, part: Part, rank: int = 0, world: int = 1) -> int:
    """The id the next video of ``part`` gets: unique across the ranks of a sharded run (rank r takes r, r + N, ...)."""
    return (index.state.next_video_id + len(part)) * world + rank
