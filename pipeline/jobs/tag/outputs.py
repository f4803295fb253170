"""Scoring stored embeddings against labels, merging windows into action segments, and writing the output tables,
all in bounded batches: the rows of an archive stream from the index to the files and are never held at once."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch

from clip_model.errors import UserError
from pipeline.model.prompts import load_templates
from pipeline.model.scorers import VideoState
from pipeline.model.video_text import LabelScorer, VideoTextModel
from pipeline.video.supervisor import trim_heap

from .index import SCAN_BATCH, TagIndex
from .index_state import IndexDamaged, exclusive_lock, file_name, shown_name

FORMATS = (".parquet", ".csv", ".jsonl")
# Tables written between two trim_heap calls. Each batch's short-lived NumPy, list and Arrow buffers fragment the
# heap: retag of 10^6 videos (11M rows) peaked at 4.1 GB without trimming and at 1.73 GB with it.
TRIM_EVERY = 2


def top_columns(topk: int) -> list[tuple[str, pa.DataType]]:
    return [col for j in range(1, topk + 1) for col in ((f"label_{j}", pa.string()), (f"score_{j}", pa.float64()))]


def output_schemas(topk: int) -> dict[str, pa.Schema]:
    """The columns of OUT (one row per tagged video), its .segments sibling (windows and merged action runs) and its
    .errors sibling (one row per failure)."""
    top = top_columns(topk)
    return {
        "videos": pa.schema([("path", pa.string()), ("status", pa.string()), ("duration_s", pa.float64()),
                             ("decoder", pa.string()), ("windows", pa.int32()), ("warnings", pa.string()), *top,
                             ("labels_above", pa.string())]),
        "segments": pa.schema([("path", pa.string()), ("kind", pa.string()), ("window", pa.int32()),
                               ("start_s", pa.float64()), ("end_s", pa.float64()), *top, ("windows", pa.int32()),
                               ("labels_above", pa.string())]),
        "errors": pa.schema([("path", pa.string()), ("stage", pa.string()), ("status", pa.string()),
                             ("reason", pa.string())]),
    }


class TopLabels:
    """Stored states -> each row's top-k labels and probabilities, a batch at a time; with ``above``, also every label
    whose probability reaches it (multi-label tags: with sigmoid scoring each label's own probability, with softmax
    its share of the labels)."""

    def __init__(self, labels: LabelScorer, names: Sequence[str], topk: int, above: float | None = None):
        self.scorer, self.labels = labels, np.asarray(names, dtype=object)
        self.k, self.above = min(topk, len(names)), above

    def top(self, vectors: np.ndarray, tokens: np.ndarray | None = None,
            ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(N, E) float16 or float32 unit vectors (and X-CLIP's (N, K, E) tokens) -> (N, k) labels and (N, k)
        probabilities, best first, and per row the labels at or above ``above`` ("a|b", best first; None without
        ``above``)."""
        state = VideoState(_tensor(vectors), None if tokens is None else _tensor(tokens))
        probs = self.scorer.probs(state)  # (N, C)
        top, idx = probs.topk(self.k, dim=-1)  # (N, k)
        return self.labels[idx.numpy()], top.double().numpy(), self._above(probs, len(state))

    def _above(self, probs: torch.Tensor, n: int) -> list[str | None]:
        if self.above is None:
            return [None] * n
        order = probs.argsort(dim=-1, descending=True)  # (N, C)
        keep = probs.gather(1, order) >= self.above  # (N, C), a prefix of each row
        return ["|".join(self.labels[row[: int(count)]]) for row, count in zip(order.numpy(), keep.sum(dim=1))]


def top_labels(model: VideoTextModel, labels: Sequence[str], templates: str | Sequence[str], topk: int,
               above: float | None = None) -> TopLabels:
    """A TopLabels of ``labels`` prompted with ``templates`` (``prompts.load_templates``), in ``model``'s scoring."""
    return TopLabels(model.labels(model.class_text(labels, load_templates(templates))), labels, topk, above)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).float()  # Arrow buffers are read-only


def vectors(batch: pa.RecordBatch, column: str = "vector") -> np.ndarray:
    """The ``vector`` column of a batch as (N, E) float16 (``tokens``: X-CLIP's as (N, K·E))."""
    values = batch.column(column)
    return values.values.to_numpy(zero_copy_only=False).reshape(len(values), -1)


def tokens(batch: pa.RecordBatch, dim: int) -> np.ndarray | None:
    """X-CLIP's stored tokens of a batch as (N, K, E) float16, or None where the index has none."""
    if "tokens" not in batch.schema.names:
        return None
    return vectors(batch, "tokens").reshape(batch.num_rows, -1, dim)


def state_columns(index: TagIndex) -> tuple[list[str], int]:
    """The embedding columns a score reads (with X-CLIP's tokens where stored), and rows per batch: fewer where each
    row carries K tokens, so a batch stays the size of ``SCAN_BATCH`` vectors."""
    k = index.token_count()
    return (["vector", "tokens"] if k else ["vector"]), max(64, SCAN_BATCH // (k + 1))


def _top_dict(labels: np.ndarray, scores: np.ndarray, topk: int) -> dict[str, list]:
    """(N, k) labels and scores -> columns label_1, score_1, ..., padded with nulls up to ``topk``."""
    cols: dict[str, list] = {}
    for j in range(topk):
        have = j < labels.shape[1]
        cols[f"label_{j + 1}"] = labels[:, j].tolist() if have else [None] * len(labels)
        cols[f"score_{j + 1}"] = scores[:, j].tolist() if have else [None] * len(labels)
    return cols


def video_rows(index: TagIndex, scorer: TopLabels, topk: int) -> Iterator[pa.Table]:
    """OUT's rows: each tagged video with its top-k. Videos and their ``video`` embeddings are committed together and
    in the same order, so the two streams zip."""
    columns, rows = state_columns(index)
    meta = index.scan("videos", ["video_id", "path", "status", "duration_s", "decoder", "windows", "warnings"],
                      where="status = 'ok'", batch_rows=rows)
    embeddings = _rows(index.scan("embeddings", ["video_id", *columns], where="kind = 'video'", batch_rows=rows),
                       index.state.dim)
    for batch in meta:
        ids = batch.column("video_id").to_numpy()
        if not len(ids):
            continue
        found = [_next_state(embeddings, int(i)) for i in ids]
        toks = None if found[0][1] is None else np.stack([t for _, t in found if t is not None])
        labels, scores, above = scorer.top(np.stack([v for v, _ in found]), toks)
        cols = {name: batch.column(name) for name in ("path", "status", "duration_s", "decoder", "windows",
                                                      "warnings")}
        yield pa.table(cols | _top_dict(labels, scores, topk) | {"labels_above": above},
                       schema=output_schemas(topk)["videos"])


def _rows(batches: Iterator[pa.RecordBatch], dim: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    for batch in batches:
        toks = tokens(batch, dim)
        ids = batch.column("video_id").to_numpy().tolist()
        yield from zip(ids, vectors(batch), toks if toks is not None else [None] * len(ids))


def _next_state(stream: Iterator[tuple[int, np.ndarray, np.ndarray | None]], video_id: int,
                ) -> tuple[np.ndarray, np.ndarray | None]:
    got, vector, toks = next(stream, (None, None, None))
    if got != video_id or vector is None:  # the commit protocol keeps the two tables in step; anything else is a damaged index
        raise UserError(f"tag index: video {video_id} has no video embedding in step (found {got}); the index is "
                         "damaged, tag into a new --out")
    return vector, toks


def segment_rows(index: TagIndex, scorer: TopLabels, topk: int) -> Iterator[pa.Table]:
    """The .segments rows: every window with its top-k, then adjacent windows of a video whose top labels agree
    merged into ``action`` rows (start of the first, end of the last, the best score). A video's windows are
    contiguous and in order in the index; a run still open at the end of a batch carries over to the next."""
    schema = output_schemas(topk)["segments"]
    carry: pa.Table | None = None  # the windows of the run left open by the previous batch
    columns, rows = state_columns(index)
    for batch in index.scan("embeddings", ["path", "window", "start_s", "end_s", *columns], where="kind = 'segment'",
                            batch_rows=rows):
        labels, scores, above = scorer.top(vectors(batch), tokens(batch, index.state.dim))
        windows = pa.table({"path": batch.column("path"), "kind": pa.array(["window"] * batch.num_rows),
                            "window": batch.column("window"), "start_s": batch.column("start_s"),
                            "end_s": batch.column("end_s")} | _top_dict(labels, scores, topk)
                           | {"windows": pa.nulls(batch.num_rows, pa.int32()), "labels_above": above}, schema=schema)
        yield windows
        runs = windows if carry is None else pa.concat_tables([carry, windows])
        starts = _run_starts(runs)
        if len(starts) > 1:
            yield _actions(runs.slice(0, starts[-1]), starts[:-1], schema)
        carry = runs.slice(starts[-1])
    if carry is not None and carry.num_rows:
        yield _actions(carry, np.array([0]), schema)


def _run_starts(windows: pa.Table) -> np.ndarray:
    """Row numbers where a new action run begins: another video, another top label, or a gap in time."""
    path = windows.column("path").to_numpy(zero_copy_only=False)
    label = windows.column("label_1").to_numpy(zero_copy_only=False)
    start, end = windows.column("start_s").to_numpy(), windows.column("end_s").to_numpy()
    new = np.ones(len(path), dtype=bool)
    new[1:] = (path[1:] != path[:-1]) | (label[1:] != label[:-1]) | (start[1:] > end[:-1])
    return np.flatnonzero(new)


def _actions(windows: pa.Table, starts: np.ndarray, schema: pa.Schema) -> pa.Table:
    """One ``action`` row per run of ``windows`` beginning at each of ``starts`` (the last run ends the table)."""
    n = windows.num_rows
    last = np.append(starts[1:], n) - 1
    cols = {name: windows.column(name).to_numpy(zero_copy_only=False) for name in
            ("path", "window", "start_s", "end_s", "label_1", "score_1")}
    rows = {"path": cols["path"][starts], "kind": np.full(len(starts), "action", dtype=object),
            "window": cols["window"][starts], "start_s": cols["start_s"][starts], "end_s": cols["end_s"][last],
            "label_1": cols["label_1"][starts], "score_1": np.maximum.reduceat(cols["score_1"], starts),
            "windows": (last - starts + 1).astype(np.int32)}
    return pa.table({name: rows.get(name, pa.nulls(len(starts), schema.field(name).type)) for name in schema.names},
                    schema=schema)


def error_rows(index: TagIndex) -> Iterator[pa.Table]:
    for batch in index.scan("videos", ["path", "stage", "status", "reason"], where="status != 'ok'"):
        yield pa.Table.from_batches([batch])


def shown_paths(table: pa.Table) -> pa.Table:
    """``table`` with its stored file names (``index.stored_name``) as they are shown: bytes that are not UTF-8 as
    ``\\xHH``."""
    column = table.column("path")
    if not pa.compute.any(pa.compute.match_substring(column, "\x00")).as_py():
        return table
    shown = pa.array([None if p is None else shown_name(file_name(p)) for p in column.to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("path"), "path", shown)


class TableWriter:
    """Rows appended in batches to a .parquet, .csv or .jsonl file (by suffix) under a unique temporary name in the
    same folder, renamed into place by ``close``: readers never see half a file, a failed write leaves the old file
    alone, and no two writers share a temporary."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)
        self.tmp = Path(tmp)
        self._writer: Any = None
        try:
            if path.suffix == ".parquet":
                self._writer = pq.ParquetWriter(self.tmp, schema)
            elif path.suffix == ".csv":
                self._writer = pa_csv.CSVWriter(self.tmp, schema, write_options=pa_csv.WriteOptions(
                    quoting_style="needed"))
            else:
                self._writer = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, table: pa.Table) -> None:
        table = shown_paths(table.select(self.schema.names).cast(self.schema))
        if self.path.suffix in (".parquet", ".csv"):
            self._writer.write_table(table)
        else:
            for row in table.to_pylist():
                self._writer.write(json.dumps(row, ensure_ascii=False) + "\n")

    def finish(self) -> None:
        """Write out everything (the Parquet footer, buffered rows) and flush it to disk, still under the temporary
        name: what can fail (a full disk) fails here, before any output is replaced."""
        self._writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())

    def publish(self) -> None:
        self.tmp.replace(self.path)

    def discard(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001, S110 - it is being thrown away; the error that led here is what counts
            pass
        self.tmp.unlink(missing_ok=True)


def write_outputs(indexes: Sequence[TagIndex], out: Path, scorer: TopLabels, topk: int) -> None:
    """OUT and its .segments and .errors siblings from every index (ranks in order), streamed; begun again once on
    the latest committed versions if a writer's compaction took away the ones being read. The caller holds
    ``output_lock(out)``."""
    try:
        _write_outputs(indexes, out, scorer, topk)
    except IndexDamaged:
        if not any([index._reopened() for index in indexes]):
            raise
        _write_outputs(indexes, out, scorer, topk)


def _write_outputs(indexes: Sequence[TagIndex], out: Path, scorer: TopLabels, topk: int) -> None:
    """Every output is written and flushed under a temporary name first, then all are renamed into place: a failure
    (a full disk, a signal) leaves the previous outputs as they were and no temporaries."""
    schemas = output_schemas(topk)
    writers: dict[str, TableWriter] = {}
    written = 0

    def write(what: str, table: pa.Table) -> None:
        nonlocal written
        writers[what].write(table)
        written += 1
        if written % TRIM_EVERY == 0:
            trim_heap()  # see TRIM_EVERY

    try:
        for what, path in (("videos", out), ("segments", sibling(out, "segments")), ("errors", sibling(out, "errors"))):
            writers[what] = TableWriter(path, schemas[what])
        for index in indexes:
            for table in video_rows(index, scorer, topk):
                write("videos", table)
            for table in segment_rows(index, scorer, topk):
                write("segments", table)
            for table in error_rows(index):
                write("errors", table)
        for w in writers.values():
            w.finish()
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    for w in writers.values():  # renames only: nothing left that a full disk can fail
        w.publish()


def sibling(out: Path, what: str) -> Path:
    """tags.parquet -> tags.segments.parquet / tags.errors.parquet."""
    return out.with_name(f"{out.stem}.{what}{out.suffix}")


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Held while OUT and its siblings are written (a hidden ``.OUT.lock`` beside them): a second writer of the same
    outputs, ``tag`` or ``retag``, is refused instead of interleaving its files with this one's."""
    handle = exclusive_lock(out.with_name(f".{out.name}.lock"), f"{out}: another process is writing {out.name} "
                                                                "(or its .segments and .errors); wait for it or use "
                                                                "another --out")
    try:
        yield
    finally:
        handle.close()


def check_output(out: Path, index: Path | None = None) -> None:
    """Refuse a bad ``--out`` (and the ``index`` folder beside it) before any work is done; create its folder, as
    benchmark and train do."""
    if out.suffix not in FORMATS:
        raise UserError(f"--out {out}: the file name must end in {', '.join(FORMATS)}")
    for path in (out, sibling(out, "segments"), sibling(out, "errors")):
        if path.is_dir():
            raise UserError(f"--out {out}: {path}: is a folder; name a file")
    if index is not None and index.exists() and not index.is_dir():
        raise UserError(f"--out {out}: {index}: is a file, not a tag index folder; remove it or use another --out")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: {parent} is not a folder") from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot create folder {parent}: {e.strerror}") from None
    for folder in (parent, *([index] if index is not None and index.is_dir() else [])):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            raise UserError(f"--out {out}: {folder} is on a read-only file system")
        if not os.access(folder, os.W_OK):
            raise UserError(f"--out {out}: folder {folder} is not writable")

