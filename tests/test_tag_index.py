"""The Lance tag index on its own: the commit protocol, compaction, filtered exact and approximate search against a
NumPy reference, float16 storage, streamed outputs, and the migration of the first format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.jobs.tag.index as index_module
from pipeline.jobs.tag.index import TagIndex, open_indexes
from pipeline.jobs.tag.job import TagSettings, open_for_tagging, resume_plan
from pipeline.jobs.tag.migrate import migrate_index, old_identity
from pipeline.jobs.tag.outputs import TableWriter, TopLabels, output_schemas, sibling, write_outputs
from pipeline.jobs.tag.part import Part, video_row
from pipeline.jobs.tag.query import SearchFilter, glob_to_like, nearest
from pipeline.jobs.tag.table_indexes import LOOKUP_INDEX, build_lookup_indexes, build_vector_index
from pipeline.model.loading import model_identity
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
from pipeline.model.scorers import ProbabilityRule
from pipeline.model.video_text import LabelScorer

DIM = 32
LABELS = ("jumping", "running", "swimming", "cooking")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _scorer(seed: int = 0) -> TopLabels:
    text = torch.from_numpy(_unit(np.random.default_rng(seed).standard_normal((len(LABELS), DIM))))
    return TopLabels(LabelScorer(text, ProbabilityRule("softmax", 50.0)), LABELS, 3)


def _fill(index: TagIndex, videos: int, windows: int = 4, seed: int = 0, commit_every: int = 5,
          prefix: str = "/archive") -> dict:
    """Commit ``videos`` videos as tag does; returns what went in: path -> (1 + W, E) float32 vectors."""
    rng = np.random.default_rng(seed)
    part, truth = Part(_scorer(), DIM), {}
    for i in range(videos):
        path = f"{prefix}/{'cats' if i % 2 else 'dogs'}/v{i:04d}.mp4"
        vecs = _unit(rng.standard_normal((1 + windows, DIM)))
        row = video_row(index.state.next_video_id + len(part), path, (100 + i, 10**9 + i), "ok") | {
            "duration_s": 2.0 * windows, "decoder": "pyav", "windows": windows, "warnings": ""}
        part.add(row, vecs, [(2.0 * k, 2.0 * k + 2.0) for k in range(windows)])
        truth[path] = vecs
        if len(part) == commit_every:
            index.commit(*part.tables())
            part.clear()
    if len(part):
        index.commit(*part.tables())
    return truth


def _settings() -> dict:
    return {"model": model_identity("random:tiny-vit"), "labels": list(LABELS)}


def test_a_commit_killed_half_way_is_undone_and_never_seen(tmp_path):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    _fill(index, 10)
    rows = (index.count("videos"), index.count("embeddings"))
    part = Part(_scorer(), DIM)  # the next part reaches the embeddings table, then the process dies
    part.add(video_row(99, "/archive/late.mp4", (1, 1), "ok") | {"duration_s": 2.0, "decoder": "pyav",
                                                                    "windows": 1, "warnings": ""},
             _unit(np.ones((2, DIM))), [(0.0, 2.0)])
    index._append("embeddings", part.tables()[1])
    assert index.table("embeddings").count_rows() == rows[1] + 2  # it is on disk
    reader = TagIndex.open(tmp_path / "i")
    assert (reader.count("videos"), reader.count("embeddings")) == rows  # readers see committed versions only
    index.close()  # as the killed process would have
    writer = TagIndex.open(tmp_path / "i", write=True)
    assert (writer.count("videos"), writer.count("embeddings")) == rows  # the writer restored them
    assert writer.table("embeddings").count_rows(filter="path = '/archive/late.mp4'") == 0
    _fill(writer, 3, seed=5, prefix="/more")
    assert writer.count("videos") == rows[0] + 3


def test_a_second_writer_is_refused_while_the_first_holds_the_index(tmp_path):
    import subprocess
    import sys

    first = TagIndex.create(tmp_path / "i", _settings(), DIM)
    code = (f"from pathlib import Path\nfrom pipeline.jobs.tag.index import TagIndex\n"
            f"TagIndex.open(Path({str(tmp_path / 'i')!r}), write=True)\n")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "another process is writing this tag index" in other.stderr
    TagIndex.open(tmp_path / "i")  # readers never wait
    first.close()
    TagIndex.open(tmp_path / "i", write=True)


def test_compaction_keeps_every_row_and_bounds_fragments_and_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "COMPACT_EVERY", 4)
    monkeypatch.setattr(index_module, "KEEP_VERSIONS", 0.0)  # versions a reader may hold are kept 2 minutes
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    truth = _fill(index, 42, commit_every=2)  # 21 commits: compacted after the 4th, 8th, ... 20th
    ds = index.table("embeddings")
    assert len(ds.get_fragments()) <= 2 and len(ds.versions()) <= 3
    paths = [p for b in index.scan("videos", ["path"]) for p in b.column(0).to_pylist()]
    assert paths == list(truth)  # committed order survives compaction
    got = np.concatenate([b.column("vector").values.to_numpy(zero_copy_only=False).reshape(b.num_rows, -1)
                          for b in index.scan("embeddings", ["vector"])])
    want = np.concatenate(list(truth.values()))
    cos = (got.astype(np.float32) * want).sum(axis=1)
    assert cos.min() > 1 - 1e-3  # float16 storage: cosine to the original >= 0.999


def _exact(truth: dict, query: np.ndarray, keep) -> list[tuple]:
    """NumPy reference: every (path, window) stored, scored by cosine, filtered, best first."""
    scored = []
    for path, vecs in truth.items():
        for k, v in enumerate(vecs.astype(np.float16).astype(np.float32)):
            window = k - 1
            start, end = (0.0, 8.0) if k == 0 else (2.0 * window, 2.0 * window + 2.0)
            if keep(path, "video" if k == 0 else "segment", start, end):
                scored.append((float(v @ query / np.linalg.norm(v)), path, window))
    return sorted(scored, reverse=True)


@pytest.mark.parametrize("where, keep", [
    (None, lambda p, kind, s, e: True),
    (SearchFilter(path_glob="*/cats/*"), lambda p, kind, s, e: "/cats/" in p),
    (SearchFilter(kind="segment", after_s=3.0, before_s=5.0), lambda p, kind, s, e: kind == "segment"
     and e >= 3.0 and s <= 5.0),
    (SearchFilter(kind="video", path_glob="/archive/dogs/v000?.mp4"), lambda p, kind, s, e: kind == "video"
     and p.startswith("/archive/dogs/v000")),
])
def test_exact_search_with_filters_equals_numpy(tmp_path, where, keep):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    truth = _fill(index, 30)
    query = _unit(np.random.default_rng(9).standard_normal(DIM))
    hits = nearest([index], query, 8, where)
    ref = _exact(truth, query, keep)[:8]
    assert [(h["path"], -1 if h["kind"] == "video" else int(h["start_s"] // 2)) for h in hits] == \
        [(p, w) for _, p, w in ref]
    assert np.allclose([h["score"] for h in hits], [s for s, _, _ in ref], atol=1e-4)


def test_label_filter_keeps_only_windows_tagged_with_it(tmp_path):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    _fill(index, 20)
    hits = nearest([index], _unit(np.ones(DIM)), 50, SearchFilter(label="running"))
    stored = index.count("embeddings", "label = 'running'")
    assert 0 < len(hits) == min(50, stored) and all(h["labels"] == ["running"] for h in hits)


@pytest.mark.slow
def test_approximate_search_recall_against_exact(tmp_path, monkeypatch):
    """IVF-PQ on clustered vectors: recall@10 against the exact answer (the bench measures it at scale)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((50, DIM)))
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    part, truth = Part(_scorer(), DIM), {}
    for i in range(1500):
        vecs = _unit(centres[i % 50] + rng.standard_normal((5, DIM)) * 0.15)
        path = f"/a/v{i}.mp4"
        part.add(video_row(i, path, (1, 1), "ok") | {"duration_s": 8.0, "decoder": "pyav", "windows": 4,
                                                        "warnings": ""}, vecs, [(2.0 * k, 2.0 * k + 2.0)
                                                                                  for k in range(4)])
        truth[path] = vecs
        if len(part) == 250:
            index.commit(*part.tables())
            part.clear()
    assert build_vector_index(index, force=True) and index.indexed_rows() == index.count("embeddings") == 7500
    recall = []
    for q in _unit(centres[:10] + rng.standard_normal((10, DIM)) * 0.1):
        got = {(h["path"], h["kind"], h["start_s"]) for h in nearest([index], q, 10)}
        ref = {(p, "video" if w < 0 else "segment", 0.0 if w < 0 else 2.0 * w) for _, p, w in
               _exact(truth, q, lambda *a: True)[:10]}
        recall.append(len(got & ref) / 10)
    assert np.mean(recall) >= 0.9


@pytest.mark.parametrize("glob, like", [("*.mp4", "%.mp4"), ("a?b", "a_b"), ("50%_off/*", "50\\%\\_off/%")])
def test_glob_to_like(glob, like):
    assert glob_to_like(glob) == like


def test_bad_filters_are_refused():
    with pytest.raises(ValueError, match="only \\* and \\? are supported"):
        SearchFilter(path_glob="[ab]*")
    with pytest.raises(ValueError, match="after .* is later than before"):
        SearchFilter(after_s=5, before_s=1)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_outputs_stream_in_batches_and_merge_actions_across_batch_boundaries(tmp_path, monkeypatch, suffix):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    truth = _fill(index, 7, windows=5)
    monkeypatch.setattr(index_module, "SCAN_BATCH", 3)  # every video's windows straddle batches
    out = tmp_path / f"tags{suffix}"
    write_outputs([index], out, _scorer(), 3)
    read = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix]
    videos, segments = read(out), read(sibling(out, "segments"))
    assert list(videos["path"]) == list(truth)
    windows = segments[segments["kind"] == "window"]
    assert len(windows) == 35
    scorer = _scorer()
    for path, vecs in truth.items():  # windows scored from the stored float16 vectors, merged where labels agree
        labels, _, _ = scorer.top(vecs[1:].astype(np.float16))
        runs = [1]
        for a, b in zip(labels[:-1, 0], labels[1:, 0]):
            runs[-1:] = [runs[-1] + 1] if a == b else [runs[-1], 1]
        acts = segments[(segments["kind"] == "action") & (segments["path"] == path)]
        assert list(acts["windows"]) == runs


def test_table_writer_leaves_no_file_when_discarded(tmp_path):
    out = tmp_path / "t.parquet"
    w = TableWriter(out, output_schemas(2)["errors"])
    w.write(pd.DataFrame({"path": ["a"], "stage": ["open"], "status": ["error"], "reason": ["x"]}).pipe(
        lambda df: __import__("pyarrow").Table.from_pandas(df)))
    w.discard()
    assert not out.exists() and not list(tmp_path.iterdir())


# ---- the first format ------------------------------------------------------------------------------------------


def _write_v1(folder: Path, parts: list[dict], settings: dict) -> None:
    """An index in the first format, written as its writer did: per part a JSON of rows and an .npz of float32
    embeddings, and manifest.json listing the parts with each path's stamp."""
    folder.mkdir(parents=True)
    listed = []
    for n, part in enumerate(parts):
        name = f"part-{n:06d}"
        (folder / f"{name}.json").write_text(json.dumps(part["rows"]))
        np.savez(folder / f"{name}.npz", videos=part["videos"], windows=part["windows"])
        listed.append({"name": name, "stamps": {r["path"]: r["stamp"]
                                                for r in part["rows"]["videos"] + part["rows"]["errors"]}})
    (folder / "manifest.json").write_text(json.dumps({"version": 1, "settings": settings, "parts": listed}))


def _v1_part(paths: list[str], seed: int, errors: tuple = ()) -> dict:
    rng = np.random.default_rng(seed)
    rows: dict = {"videos": [], "windows": [], "errors": []}
    videos, windows = [], []
    for path in paths:
        rows["videos"].append({"path": path, "status": "ok", "duration_s": 4.0, "decoder": "pyav", "windows": 2,
                               "emb": len(videos), "warnings": "", "stamp": [10, 20]})
        videos.append(_unit(rng.standard_normal(64)))
        for k in range(2):
            rows["windows"].append({"path": path, "window": k, "start_s": 2.0 * k, "end_s": 2.0 * k + 2.0,
                                    "emb": len(windows)})
            windows.append(_unit(rng.standard_normal(64)))
    rows["errors"] = [{"path": p, "stage": "decode", "status": "error", "reason": "bad", "stamp": [1, 2]}
                      for p in errors]
    return {"rows": rows, "videos": np.stack(videos), "windows": np.stack(windows)}


def test_old_index_is_refused_with_the_command_that_migrates_it_and_then_migrated(tmp_path):
    """Written as the first format's writer did, with random:tiny-vit (64-d) as the model."""
    settings = {"model": "random:tiny-vit|fp32", "labels": list(LABELS), "templates": "none", "pooling": "mean",
                "num_frames": 8, "window_s": 2.0, "stride_s": 2.0, "topk": 3}
    folder = tmp_path / "tags.csv.index"
    first, second = _v1_part(["/a/x.mp4", "/a/y.mp4"], 0, errors=("/a/bad.mp4",)), _v1_part(["/a/y.mp4"], 1)
    _write_v1(folder, [first, second], settings)
    with pytest.raises(ValueError, match=f"run_pipeline.py migrate-index {folder}"):
        open_indexes(folder)
    migrate_index(folder, device="cpu")
    (index,) = open_indexes(folder)
    assert not (folder / "manifest.json").exists() and index.state.settings["model"] == model_identity(
        "random:tiny-vit")
    rows = {r["path"]: r for b in index.scan("videos") for r in b.to_pylist()}
    assert sorted(rows) == ["/a/bad.mp4", "/a/x.mp4", "/a/y.mp4"] and rows["/a/bad.mp4"]["status"] == "error"
    vecs = {(r["path"], r["window"]): np.asarray(r["vector"], np.float32) for b in index.scan("embeddings")
            for r in b.to_pylist()}
    assert np.allclose(vecs[("/a/y.mp4", -1)], second["videos"][0], atol=1e-3)  # the newest part won
    assert np.allclose(vecs[("/a/y.mp4", 1)], second["windows"][1], atol=1e-3)
    assert np.allclose(vecs[("/a/x.mp4", 0)], first["windows"][0], atol=1e-3)
    assert len(vecs) == 6
    cfg = TagSettings(RuntimeSettings("random:tiny-vit", device="cpu"), LABELS,
                      overrides=ProtocolOverrides(templates="none", num_frames=8, pooling="mean"), window_s=2.0,
                      stride_s=2.0, topk=3)
    resumed = open_for_tagging(folder, cfg.identity(), 64)  # the same settings resume without complaint
    assert resume_plan(resumed, [], [])[0] == []


def test_old_model_keys_become_identities():
    assert old_identity("ViT-B/32|bf16") == {"spec": "ViT-B/32", "precision": "bf16"}
    assert old_identity("/m/model.pt|model.pt:123:456,b:c.json:7:8|fp32") == {
        "spec": "/m/model.pt", "precision": "fp32", "files": [["model.pt", 123, 456], ["b:c.json", 7, 8]]}


def test_top_labels_top_k_equals_the_softmax_of_zero_shot():
    scorer = _scorer()
    x = _unit(np.random.default_rng(3).standard_normal((50, DIM)))
    labels, scores, above = scorer.top(x.astype(np.float16))
    logits = 50.0 * x.astype(np.float16).astype(np.float64) @ scorer.scorer.text.double().numpy().T  # (50, C)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)[:, :3]
    assert labels.tolist() == [[LABELS[j] for j in row] for row in order]
    assert np.allclose(scores, np.take_along_axis(probs, order, axis=1), atol=1e-6)
    assert above == [None] * 50


def test_top_labels_lists_every_label_at_or_above_the_threshold_for_both_scorings():
    text = _scorer().scorer.text
    x = _unit(np.random.default_rng(4).standard_normal((40, DIM)))
    cos = x.astype(np.float16).astype(np.float64) @ text.double().numpy().T
    for scoring, probs in ((ProbabilityRule("sigmoid", 10.0, -2.0), 1 / (1 + np.exp(-(10.0 * cos - 2.0)))),
                           (ProbabilityRule("softmax", 5.0), np.exp(5 * cos) / np.exp(5 * cos).sum(1, keepdims=True))):
        _, scores, above = TopLabels(LabelScorer(text, scoring), LABELS, 2, above=0.3).top(x.astype(np.float16))
        assert np.allclose(scores, -np.sort(-probs, axis=1)[:, :2], atol=1e-6)
        for row, got in zip(probs, above):
            want = [LABELS[j] for j in np.argsort(-row) if row[j] >= 0.3]
            assert got == "|".join(want)
        counts = [len(a.split("|")) if a else 0 for a in above]
        assert min(counts) < max(counts)  # the threshold separates rows: some get several labels, some fewer


def test_a_first_commit_killed_after_creating_a_table_starts_clean(tmp_path):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    part = Part(_scorer(), DIM)
    part.add(video_row(0, "/a/v.mp4", (1, 1), "ok") | {"duration_s": 2.0, "decoder": "pyav", "windows": 1,
                                                          "warnings": ""}, _unit(np.ones((2, DIM))), [(0.0, 2.0)])
    index._append("embeddings", part.tables()[1])  # the table exists on disk; state.json does not name it yet
    index.close()
    again = TagIndex.open(tmp_path / "i", write=True)
    assert again.count("embeddings") == 0
    _fill(again, 2)
    assert again.count("videos") == 2 and again.count("embeddings") == 10


def test_rows_added_after_the_vector_index_are_folded_in_past_a_tenth(tmp_path):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    _fill(index, 600, commit_every=100)
    assert build_vector_index(index, force=True) and index.indexed_rows() == 3000
    _fill(index, 20, seed=3, prefix="/few")  # 100 rows: under a tenth, searched exactly beside the index
    assert not build_vector_index(index, force=True) and index.indexed_rows() == 3000
    _fill(index, 200, seed=4, prefix="/more")
    assert build_vector_index(index, force=True) and index.indexed_rows() == index.count("embeddings") == 4100
    hits = nearest([index], _unit(np.ones(DIM)), 5, SearchFilter(path_glob="/few/*"))
    assert len(hits) == 5 and all(h["path"].startswith("/few/") for h in hits)


def test_one_video_is_found_through_the_lookup_index_and_a_pre_poster_index_still_takes_commits(tmp_path):
    index = TagIndex.create(tmp_path / "i", _settings(), DIM)
    # an index written before posters: its videos table lacks the column
    part = Part(_scorer(), DIM)
    part.add(video_row(0, "/a/old.mp4", (1, 2), "ok") | {"duration_s": 4.0, "decoder": "pyav", "windows": 2,
                                                           "warnings": ""},
             _unit(np.random.default_rng(0).standard_normal((3, DIM))), [(0.0, 2.0), (2.0, 4.0)])
    videos, embeddings = part.tables()
    index.commit(videos.drop_columns(["poster"]), embeddings)
    part.clear()
    truth = _fill(index, 30, windows=3)  # rows with posters (None here) go into the old table without the column
    assert "poster" not in index.table("videos").schema.names and index.count("videos") == 31
    assert index.video(0, ["path", "poster"]) == {"path": "/a/old.mp4"}
    assert build_lookup_indexes(index)
    names = {i.name for i in index.table("videos").describe_indices()}
    assert names == {LOOKUP_INDEX}
    plan = index.table("embeddings").scanner(filter="video_id = 7").explain_plan()
    assert "ScalarIndexQuery" in plan, plan
    for video_id in (1, 17, 30):  # ids follow commit order: video i of _fill has id 1 + i
        path = f"/archive/{'cats' if (video_id - 1) % 2 else 'dogs'}/v{video_id - 1:04d}.mp4"
        assert index.video(video_id, ["video_id", "path", "windows"]) == {"video_id": video_id, "path": path,
                                                                          "windows": 3}
        segments = index.segments(video_id, ["start_s", "end_s", "vector"])
        assert [(s["start_s"], s["end_s"]) for s in segments] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
        assert np.allclose([s["vector"] for s in segments], truth[path][1:], atol=1e-3)
    assert index.video(999, ["path"]) is None and index.segments(999, ["start_s"]) == []
    assert not build_lookup_indexes(index)  # nothing new since
