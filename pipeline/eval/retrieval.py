"""Text-to-video retrieval metrics as CLIP4Clip defines them: R@1, R@5, R@10 (percent of queries whose match ranks
in the top K), MdR (median rank) and MnR (mean rank), ranks counted from 1, for text -> video and video -> text.

Ties: a match's rank is 1 + the number of candidates scoring strictly higher. That is the first position at which
CLIP4Clip's ``compute_metrics`` finds the match's score in the sorted row; where several candidates tie with the
match, CLIP4Clip also counts each further tied position as an extra query, which we do not (each query counts once).

Several captions per video (MSR-VTT's training files, one's own CSV) follow CLIP4Clip's multi-sentence protocol:
text -> video ranks each caption's own video among all videos; video -> text scores each video's caption group by
its best caption (the max over the group) and ranks the video's own group among all groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECALL_AT = (1, 5, 10)


def text_to_video_ranks(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """``sim`` (V, T): video v against caption t; ``caption_video`` (T,) each caption's video -> (T,) ranks."""
    own = sim[caption_video, np.arange(sim.shape[1])]  # (T,)
    return 1 + (sim > own[None, :]).sum(axis=0)


def group_scores(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """(V, T) -> (V, G) with G = V: each video against each video's caption group, by the group's best caption."""
    groups = np.full((sim.shape[0], sim.shape[0]), -np.inf, dtype=np.float64)
    np.maximum.at(groups.T, caption_video, sim.T.astype(np.float64))  # groups[:, g] = max over captions of video g
    return groups


def video_to_text_ranks(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """(V, T) -> (V,) ranks of each video's own caption group among all groups (``group_scores``)."""
    groups = group_scores(sim, caption_video)
    own = np.diag(groups)
    return 1 + (groups > own[:, None]).sum(axis=1)


@dataclass(frozen=True)
class RetrievalMetrics:
    recall: dict[int, float]  # K -> percent of queries ranked within the top K
    median_rank: float | None  # None where over half the ranks are unknown (an index that returns at most k hits)
    mean_rank: float | None  # None where any rank is unknown
    queries: int

    def summary(self, prefix: str) -> dict[str, float | int | None]:
        return {**{f"{prefix}R@{k}": v for k, v in self.recall.items()}, f"{prefix}MdR": self.median_rank,
                f"{prefix}MnR": self.mean_rank, f"{prefix}queries": self.queries}


def retrieval_metrics(ranks: np.ndarray) -> RetrievalMetrics:
    """Ranks from 1 (``np.inf`` for a match not found among an index's hits) -> the metrics."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        raise ValueError("no queries to score")
    median = float(np.median(ranks))
    return RetrievalMetrics({k: float(100 * np.mean(ranks <= k)) for k in RECALL_AT},
                            median if np.isfinite(median) else None,
                            float(ranks.mean()) if np.isfinite(ranks).all() else None, len(ranks))


def recall_curve(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Percent of queries within the top K, for each K of ``ks``: the R@K curve."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.array([100 * np.mean(ranks <= k) for k in ks])
