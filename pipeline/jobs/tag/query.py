"""Reading a tag index back without decoding: ``search`` ranks stored videos and windows for a text, ``retag`` writes
the output tables for another vocabulary. Both stream from the index (see ``index``), so memory stays bounded."""
from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clip_model.errors import UserError
from datasets.labels import check_unique_labels
from pipeline.model.loading import load_model
from pipeline.model.runtime import resolve_device
from pipeline.model.scorers import VideoState
from pipeline.model.video_text import VideoTextModel
from pipeline.video.supervisor import trim_heap

from .index import TagIndex, common_settings, open_indexes
from .index_state import file_name, sql_string
from .outputs import check_output, output_lock, top_labels, write_outputs

HIT_COLUMNS = ["video_id", "path", "kind", "start_s", "end_s", "label", "score", "_distance"]
# X-CLIP: the vector search takes this many times k candidates by the plain text embedding, which are then re-ranked
# by the text as conditioned on each candidate's stored tokens (the prompt generator adds a small learned share,
# alpha, to the text, so the plain ranking is the near neighbour of the conditioned one)
RERANK = 10


@dataclass(frozen=True)
class SearchFilter:
    """What a hit must satisfy, applied before the vector search. Times select the windows that overlap
    [after_s, before_s]; a label is the top label a window or video got when it was tagged."""

    path_glob: str | None = None  # e.g. "*/2024/*.mp4" (``*`` any run of characters, ``?`` one)
    label: str | None = None
    after_s: float | None = None
    before_s: float | None = None
    kind: str | None = None  # "video" or "segment"; None: both

    def __post_init__(self) -> None:
        if self.kind not in (None, "video", "segment"):
            raise UserError(f"kind {self.kind!r}: choose video or segment")
        if self.path_glob is not None and re.search(r"[\[\]]", self.path_glob):
            raise UserError(f"path glob {self.path_glob!r}: only * and ? are supported")
        if self.after_s is not None and self.before_s is not None and self.after_s > self.before_s:
            raise UserError(f"time range: after ({self.after_s}) is later than before ({self.before_s})")

    def sql(self) -> str | None:
        terms = []
        if self.path_glob:
            terms.append(f"path LIKE {sql_string(glob_to_like(self.path_glob))} ESCAPE '\\'")
        if self.label is not None:
            terms.append(f"label = {sql_string(self.label)}")
        if self.after_s is not None:
            terms.append(f"end_s >= {float(self.after_s)!r}")
        if self.before_s is not None:
            terms.append(f"start_s <= {float(self.before_s)!r}")
        if self.kind is not None:
            terms.append(f"kind = {sql_string(self.kind)}")
        return " AND ".join(terms) or None


def glob_to_like(glob: str) -> str:
    """A shell-style glob as a SQL LIKE pattern (with ``\\`` escaping LIKE's own wildcards)."""
    out = []
    for ch in glob:
        out.append("%" if ch == "*" else "_" if ch == "?" else "\\" + ch if ch in "%_\\" else ch)
    return "".join(out)


def index_model(settings: dict, device: str) -> VideoTextModel:
    """The model a tag index was written with, from its stored identity."""
    return load_model(settings["model"]["spec"], resolve_device(device), settings["model"]["precision"],
                      num_frames=settings.get("num_frames"))


def nearest(indexes: Sequence[TagIndex], query: np.ndarray, k: int, where: SearchFilter | None = None,
            states: bool = False) -> list[dict]:
    """The ``k`` stored videos and windows nearest ``query`` (cosine, best first) across every rank's index; with
    ``states``, each hit also carries its stored ``state`` (vector and X-CLIP's tokens) for a re-rank. A video of one
    window is one hit: its window is the whole video, the same vector (the video's row is kept)."""
    sql = (where or SearchFilter()).sql()
    hits = []
    for index in indexes:
        extra = (["vector", "tokens"] if index.token_count() else ["vector"]) if states else []
        table = index.nearest(query, 2 * k, where=sql, columns=HIT_COLUMNS + extra)  # room for the one-window pairs
        rows = table.to_pylist()
        single = index.video_ids(f"windows = 1 AND video_id IN ({', '.join(str(int(r['video_id'])) for r in rows)})"
                                 ) if rows else set()
        shown: set[int] = set()  # the one-window videos already hit
        for row in sorted(rows, key=lambda r: (float(r["_distance"]), r["kind"] != "video")):
            if row["video_id"] in single:
                if row["video_id"] in shown:
                    continue
                shown.add(row["video_id"])
            hit = {"video_id": row["video_id"], "path": file_name(row["path"]), "kind": row["kind"],
                   "start_s": row["start_s"], "end_s": row["end_s"], "labels": [row["label"]],
                   "score": 1.0 - float(row["_distance"])}
            if states:
                tokens = row.get("tokens")
                hit["state"] = VideoState(torch.tensor(row["vector"])[None], None if tokens is None else
                                          torch.tensor(tokens).view(1, -1, len(row["vector"])))
            hits.append(hit)
    return sorted(hits, key=lambda h: -h["score"])[:k]


def text_search(model: VideoTextModel, indexes: Sequence[TagIndex], query: str, k: int,
                where: SearchFilter | None = None, lock: AbstractContextManager | None = None) -> list[dict]:
    """The ``k`` best hits for a text: by cosine to its embedding; for X-CLIP, ``RERANK`` x k candidates found so,
    re-ranked by the cosine to the text as conditioned on each (its score). ``lock`` guards the model's use."""
    lock = lock or nullcontext()
    with lock:
        vector = model.query(query)
    if not model.reranks_search:
        return nearest(indexes, vector, k, where)
    hits = nearest(indexes, vector, k * RERANK, where, states=True)
    if hits:
        with lock:
            labels = model.labels(model.class_text([query], ["{}"]))
            cosines = labels.cosines(VideoState.cat([h.pop("state") for h in hits]))[:, 0].tolist()
        for hit, cosine in zip(hits, cosines):
            hit["score"] = float(cosine)
    return sorted(hits, key=lambda h: -h["score"])[:k]


def search(index_path: str | Path, query: str, topk: int = 10, device: str = "auto",
           where: SearchFilter | None = None) -> list[dict]:
    """The stored videos and windows whose embeddings best match ``query`` (cosine), best first: path, kind
    (video or segment), start and end seconds, score, the label each got when tagged, and its video id."""
    indexes = open_indexes(Path(index_path))
    model = index_model(common_settings(indexes), device)
    hits = text_search(model, indexes, query, topk, where)
    del model
    trim_heap()  # the model is no longer needed: its memory goes back
    return hits


def retag(index_path: str | Path, labels: Sequence[str], out: str | Path, templates: str | None = None,
          topk: int | None = None, device: str = "auto", above: float | None = None) -> Path:
    """Score a tag index against a new vocabulary without decoding; writes OUT and its siblings, as tag would."""
    check_unique_labels(labels)
    indexes = open_indexes(Path(index_path))
    settings = common_settings(indexes)
    out = Path(out).expanduser().resolve()
    check_output(out)
    with output_lock(out):
        model = index_model(settings, device)
        k = topk or settings["topk"]
        scorer = top_labels(model, labels, templates or settings["templates"], k, above)  # X-CLIP's keeps the model
        del model
        trim_heap()  # only the label texts are needed from here: the model's memory goes back before streaming
        write_outputs(indexes, out, scorer, k)
    return out
