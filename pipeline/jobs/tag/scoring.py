"""Scoring stored embeddings against labels, merging windows into action segments, and writing the output tables."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.zero_shot import top_k, zero_shot_probs

FORMATS = (".parquet", ".csv", ".jsonl")


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
    """Refuse a bad ``--out`` before any work is done; create its folder, as benchmark and train do."""
    if out.suffix not in FORMATS:
        raise ValueError(f"--out {out}: the file name must end in {', '.join(FORMATS)}")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {out}: {parent} is not a folder") from None
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create folder {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {parent} is not writable")
