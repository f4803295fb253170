"""Batch tagging: bad files land in the errors file, kill -9 at random points still gives one row set per video,
changed settings are refused, re-tagging equals tagging afresh, and search finds what an archive shows."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tag_world import LABELS, WORLD

from datasets.synthetic import write_video
from datasets.world import Clip, render, write_world
from pipeline.jobs.tag.discover import discover
from pipeline.jobs.tag.index import TagIndex
from pipeline.jobs.tag.job import TagSettings, shard_of, tag
from pipeline.jobs.tag.outputs import sibling
from pipeline.jobs.tag.query import SearchFilter, retag, search
from pipeline.model.loading import load_model
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

ROOT = Path(__file__).resolve().parents[1]


def _archive(folder: Path, n: int | None = None) -> list[Path]:
    files = write_world(folder / "world", WORLD)
    videos = sorted((folder / "world" / "videos").glob("*.mp4"))[:n]
    archive = folder / "archive"
    for i, v in enumerate(videos):
        target = archive / ("sub" if i % 3 == 0 else "") / v.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(v, target)
    del files
    return sorted(p.resolve() for p in archive.rglob("*.mp4"))


def _settings(runtime: dict | None = None, **kw) -> TagSettings:
    rt = RuntimeSettings(**(dict(model="random:tiny-vit", device="cpu", decode_workers=1) | (runtime or {})))
    asked = {k: kw.pop(k) for k in ("templates", "num_frames", "pooling") if k in kw}
    base = dict(labels=LABELS, window_s=0.5, stride_s=0.25, topk=3, commit_every=2)
    return TagSettings(rt, overrides=ProtocolOverrides(**({"templates": "none"} | asked)), **(base | kw))


@pytest.mark.slow
def test_mixed_archive_lists_every_bad_file_and_tags_the_rest(tmp_path, monkeypatch):
    good = _archive(tmp_path, 5)
    archive = tmp_path / "archive"
    (archive / "zero.mp4").write_bytes(b"")
    (archive / "text.mp4").write_text("not a video\n")
    (archive / "cut.mp4").write_bytes(good[0].read_bytes()[:300])  # truncated before its index
    (archive / "notes.txt").write_text("ignored: not a video extension\n")
    import av

    with av.open(str(archive / "audio.mp4"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    locked = archive / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # root ignores permissions, so refuse this folder the way the kernel would
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "tags.csv"
    summary = tag(_settings(), archive, out, progress=False)
    videos, errors = pd.read_csv(out), pd.read_csv(sibling(out, "errors"))
    assert sorted(videos["path"]) == [str(p) for p in good] and (videos["status"] == "ok").all()
    by_name = {Path(p).name: (stage, reason) for p, stage, reason in zip(errors["path"], errors["stage"],
                                                                         errors["reason"])}
    assert set(by_name) == {"zero.mp4", "text.mp4", "cut.mp4", "audio.mp4", "locked"}, by_name
    assert by_name["zero.mp4"][0] == "open" and "empty" in by_name["zero.mp4"][1]
    assert by_name["text.mp4"][0] == "open" and by_name["audio.mp4"][0] == "open"
    assert by_name["locked"] == ("open", "cannot list folder: Permission denied")
    assert summary.ok == 5 and summary.failed == {"error": 4}
    segments = pd.read_csv(sibling(out, "segments"))
    windows = segments[segments["kind"] == "window"]
    assert set(windows["path"]) == set(videos["path"])
    expected_windows = videos.set_index("path")["windows"].sort_index()
    assert (windows.groupby("path").size().sort_index() == expected_windows).all()
    assert ((windows["end_s"] - windows["start_s"]).round(3) <= 0.5).all()
    actions = segments[segments["kind"] == "action"]  # merged runs of one top label tile each video's windows
    assert (actions.groupby("path")["windows"].sum().sort_index() == expected_windows).all()
    # the folder can be listed again: its error row goes and what it holds is tagged
    monkeypatch.setattr(os, "scandir", real_scandir)
    shutil.copy(good[0], locked / "inside.mp4")
    again = tag(_settings(), archive, out, progress=False)
    assert (again.ok, again.failed) == (1, {})
    errors = pd.read_csv(sibling(out, "errors"))
    assert sorted(Path(p).name for p in errors["path"]) == ["audio.mp4", "cut.mp4", "text.mp4", "zero.mp4"]
    assert str((locked / "inside.mp4").resolve()) in set(pd.read_csv(out)["path"])


# Ranks of world 2, 3, 4 and 8 that sharded indexes already hold these paths on (crc32 of the path's bytes, the
# SHARD_OF their settings record): a resumed torchrun must find every file where it was put, whatever the process.
SHARD_GOLDEN = {"/archive/0/clip_00000.mp4": [1, 1, 1, 5], "/data/vids/a b.mkv": [0, 1, 2, 2],
                "/data/é/ü.mp4": [0, 0, 2, 6], "relative/x.avi": [0, 1, 0, 0]}


def test_a_files_rank_is_the_one_sharded_indexes_recorded_and_the_ranks_get_even_shares():
    assert {p: [shard_of(p, w) for w in (2, 3, 4, 8)] for p in SHARD_GOLDEN} == SHARD_GOLDEN
    paths = [f"/archive/{k // 7}/clip_{k:05d}.mp4" for k in range(5000)]
    counts = np.bincount([shard_of(p, 4) for p in paths], minlength=4)
    assert counts.min() > 0.9 * len(paths) / 4, counts  # and the ranks get even shares


def test_missing_archive_and_bad_output_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="no such archive folder or manifest file"):
        tag(_settings(), tmp_path / "nope", tmp_path / "t.csv", progress=False)
    with pytest.raises(ValueError, match="must end in .parquet, .csv, .jsonl"):
        tag(_settings(), tmp_path, tmp_path / "t.txt", progress=False)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        tag(_settings(), tmp_path, tmp_path / "file" / "t.csv", progress=False)


def test_output_folder_is_created(tmp_path):
    _archive(tmp_path, 1)
    out = tmp_path / "runs" / "new" / "tags.csv"
    summary = tag(_settings(), tmp_path / "archive", out, progress=False)
    assert summary.ok == 1 and out.is_file()


def test_manifest_and_globs(tmp_path):
    videos = _archive(tmp_path, 6)
    manifest = tmp_path / "list.txt"
    manifest.write_text("# two of them\n" + "\n".join(os.path.relpath(v, tmp_path) for v in videos[:2]) + "\n")
    assert discover(manifest)[0] == videos[:2]
    with pytest.raises(ValueError, match="list.txt: --include/--exclude filter a folder's files"):
        discover(manifest, exclude=["sub/*"])
    found, _ = discover(tmp_path / "archive", exclude=["sub/*"])
    assert found == [v for v in videos if v.parent.name != "sub"]
    assert discover(tmp_path / "archive", include=["sub/*.mp4"])[0] == [v for v in videos if v.parent.name == "sub"]


@pytest.mark.slow
def test_resume_after_kill_9_at_random_points_gives_each_video_once(tmp_path):
    videos = _archive(tmp_path, 12)
    out = tmp_path / "tags.parquet"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "tag", str(tmp_path / "archive"), "--out", str(out),
           "--labels", ",".join(LABELS), "--templates", "none", "--model", "random:tiny-vit", "--device", "cpu",
           "--window", "0.5", "--stride", "0.25", "--decode-workers", "1", "--commit-every", "1", "--precision", "fp32"]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    cmd[cmd.index("--labels") + 1] = str(labels_file)
    state = tmp_path / "tags.parquet.index" / "state.json"

    def committed() -> int:
        try:
            return json.loads(state.read_text())["commits"]
        except (OSError, ValueError):
            return 0

    rng = random.Random(0)
    kills = 0
    for target in sorted(rng.sample(range(1, len(videos) - 1), 3)):  # kill after 3 random numbers of committed parts
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while committed() < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))  # then anywhere in the next decode/commit cycle
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2  # each one while the job was still running (committing, or writing the outputs)
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    rows = pd.read_parquet(out)
    assert sorted(rows["path"]) == [str(v) for v in videos]  # every video exactly once
    straight = tmp_path / "straight.parquet"
    tag(_settings(labels=LABELS), tmp_path / "archive", straight, progress=False)
    ref = pd.read_parquet(straight).set_index("path").sort_index()
    got = rows.set_index("path").sort_index()
    assert (got["label_1"] == ref["label_1"]).all()
    np.testing.assert_allclose(got["score_1"], ref["score_1"], rtol=1e-4)
    seg, seg_ref = pd.read_parquet(sibling(out, "segments")), pd.read_parquet(sibling(straight, "segments"))
    assert len(seg) == len(seg_ref) and not seg.duplicated(["path", "kind", "window"]).any()


@pytest.mark.slow
def test_changed_settings_are_refused_and_changed_files_retagged(tmp_path):
    videos = _archive(tmp_path, 4)
    out = tmp_path / "tags.jsonl"
    first = tag(_settings(), tmp_path / "archive", out, progress=False)
    assert first.ok == 4
    again = tag(_settings(), tmp_path / "archive", out, progress=False)
    assert again.skipped == 4 and again.ok == 0
    with pytest.raises(ValueError, match=r"settings changed.*labels"):
        tag(_settings(labels=("a", "b")), tmp_path / "archive", out, progress=False)
    with pytest.raises(ValueError, match=r"settings changed.*window_s \(0\.5 -> 1\.0\)"):
        tag(_settings(window_s=1.0), tmp_path / "archive", out, progress=False)
    os.utime(videos[1], ns=(time.time_ns(), time.time_ns()))  # touched: tagged again
    third = tag(_settings(), tmp_path / "archive", out, progress=False)
    assert third.ok == 1 and third.skipped == 3
    assert sorted(pd.read_json(out, lines=True)["path"]) == [str(v) for v in videos]


@pytest.mark.slow
def test_retag_equals_a_fresh_tag_with_the_new_labels(tmp_path, trained):
    _archive(tmp_path, 6)
    settings = _settings(runtime={"model": str(trained)}, pooling="temporal", window_s=1.0, stride_s=1.0)
    out = tmp_path / "tags.csv"
    tag(settings, tmp_path / "archive", out, progress=False)
    new_labels = ("blinking", "growing", "something moving left", "moving right")
    re = retag(Path(str(out) + ".index"), new_labels, tmp_path / "retag.csv")
    fresh = tmp_path / "fresh.csv"
    tag(_settings(runtime={"model": str(trained)}, pooling="temporal", window_s=1.0, stride_s=1.0, labels=new_labels),
        tmp_path / "archive", fresh, progress=False)
    a, b = pd.read_csv(re).sort_values("path"), pd.read_csv(fresh).sort_values("path")
    assert list(a["label_1"]) == list(b["label_1"])
    np.testing.assert_allclose(a[["score_1", "score_2", "score_3"]], b[["score_1", "score_2", "score_3"]], rtol=1e-4)
    assert set(a["label_1"]) <= set(new_labels)


@pytest.mark.slow
def test_search_finds_the_video_showing_the_query(tmp_path, trained):
    """An archive of one clip per action; each query's top video hit shows that action. (After 400 steps the model
    still weighs left against right at about 50/36 %, so for 'moving left' only the two moving clips must lead.)"""
    archive = tmp_path / "archive"
    clips = [Clip("red", "circle", a, seed=100 + i, split="train") for i, a in enumerate(WORLD.actions)]
    for c in clips:
        write_video(archive / f"{c.action.replace(' ', '_')}.mp4", render(c, WORLD), fps=WORLD.fps, crf=12)
    out = tmp_path / "tags.csv"
    tag(_settings(runtime={"model": str(trained)}, pooling="temporal", window_s=1.0, stride_s=1.0), archive, out, progress=False)
    index = Path(str(out) + ".index")
    for action in ("growing", "blinking"):
        hits = [h for h in search(index, f"a red circle {action}", topk=10) if h["kind"] == "video"]
        assert Path(hits[0]["path"]).stem == action.replace(" ", "_"), (action, hits[:3])
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    hits = [h for h in search(index, "a red circle moving left", topk=10) if h["kind"] == "video"]
    assert {Path(h["path"]).stem for h in hits[:2]} == {"moving_left", "moving_right"}, hits[:3]
    # each clip is one window, listed once (as its video) unless windows alone are asked for
    assert not [h for h in search(index, "something blinking", topk=10) if h["kind"] == "segment"]
    segments = search(index, "something blinking", topk=10, where=SearchFilter(kind="segment"))
    assert Path(segments[0]["path"]).stem == "blinking" and segments[0]["end_s"] > segments[0]["start_s"]


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_rows_of_one_process(tmp_path):
    videos = _archive(tmp_path, 7)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "sharded.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "run_pipeline.py"), "tag", str(tmp_path / "archive"), "--out", str(out), "--labels",
         str(labels_file), "--templates", "none", "--model", "random:tiny-vit", "--device", "cpu", "--window", "0.5",
         "--stride", "0.25", "--decode-workers", "1", "--topk", "3", "--precision", "fp32"],  # as the reference
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "sharded.csv.index").iterdir())
    assert shards == ["rank-000-of-002", "rank-001-of-002"]  # each resumable on its own
    single = tmp_path / "single.csv"
    tag(_settings(), tmp_path / "archive", single, progress=False)
    for a, b in ((out, single), (sibling(out, "segments"), sibling(single, "segments"))):
        keys = ["path", *(["kind", "window"] if "segments" in a.name else [])]
        got = pd.read_csv(a, keep_default_na=False).sort_values(keys)
        ref = pd.read_csv(b, keep_default_na=False).sort_values(keys)
        assert list(got.columns) == list(ref.columns) and len(got) == len(ref)
        for col in got.columns:
            if col.startswith("score_"):
                np.testing.assert_allclose(pd.to_numeric(got[col], errors="coerce"),  # '' where a row has no k-th
                                           pd.to_numeric(ref[col], errors="coerce"), rtol=1e-5, err_msg=col)
            else:
                assert got[col].tolist() == ref[col].tolist(), col
    assert sorted(pd.read_csv(out)["path"]) == [str(v) for v in videos]
    hits = search(tmp_path / "sharded.csv.index", "something growing", topk=8, device="cpu")  # reads every shard
    ref = search(tmp_path / "single.csv.index", "something growing", topk=8, device="cpu")
    key = ["path", "kind", "start_s", "end_s", "labels"]
    assert [[h[k] for k in key] for h in hits] == [[h[k] for k in key] for h in ref]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in ref], atol=1e-5)
    ids = [h["video_id"] for h in search(tmp_path / "sharded.csv.index", "something", topk=100, device="cpu",
                                         where=SearchFilter(kind="video"))]
    assert len(ids) == len(set(ids)) == len(videos)  # video ids are unique across the ranks


def _discover_reference(source: Path, include=(), exclude=()) -> list[Path]:
    """discover's folder listing written the obvious way (os.walk, every path resolved, a link to nothing kept under its
    own name in its resolved folder): what the fast one must equal."""
    import fnmatch

    from pipeline.jobs.tag.discover import VIDEO_EXTENSIONS

    found = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(source).as_posix()
            wanted = any(fnmatch.fnmatch(rel, g) for g in include) if include else name.lower().endswith(
                VIDEO_EXTENSIONS)
            if wanted and not any(fnmatch.fnmatch(rel, g) for g in exclude):
                path = Path(root) / name
                found.append(path.resolve() if path.exists() else path.parent.resolve() / name)
    return list(dict.fromkeys(found))


def test_listing_equals_walking_and_resolving_every_path(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "far.mp4").write_bytes(b"x")
    (outside / "inner").mkdir()
    (outside / "inner" / "deep.mp4").write_bytes(b"x")
    archive = tmp_path / "real_archive"
    for rel in ("a.mp4", "B.MKV", "notes.txt", "z/1.mp4", "z/y/2.avi", "m/3.webm", "m/n/o/p/4.mp4", "_/5.mp4"):
        (archive / rel).parent.mkdir(parents=True, exist_ok=True)
        (archive / rel).write_bytes(b"x")
    (archive / "link_in.mp4").symlink_to(archive / "z" / "1.mp4")
    (archive / "m" / "link_out.mp4").symlink_to(outside / "far.mp4")
    (archive / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (archive / "folder_link").symlink_to(outside / "inner")  # links to folders are not walked into
    (tmp_path / "archive_link").symlink_to(archive)  # the archive itself reached through a link
    for source in (archive, tmp_path / "archive_link", tmp_path / "archive_link" / "m"):
        for include, exclude in (((), ()), (("*.mp4", "z/*"), ()), ((), ("m/*",)), (("*/*",), ("*.avi",))):
            got, errors = discover(source, include, exclude)
            assert got == _discover_reference(source, include, exclude) and not errors, (source, include, exclude)
    got = discover(archive)[0]
    assert archive.resolve() / "z" / "1.mp4" in got and (outside / "far.mp4").resolve() in got
    assert len(got) == len(set(got))  # z/1.mp4 once, though link_in.mp4 names it too
    assert not any("deep" in str(p) for p in got)


@pytest.mark.slow
def test_bf16_tags_agree_with_fp32_on_top1(tmp_path, trained):
    """--precision auto picks bf16 on CPUs with native bf16: its tags must be fp32's (agreement rate printed)."""
    videos = _archive(tmp_path)
    rows = {}
    for precision in ("fp32", "bf16"):
        settings = _settings(runtime={"model": str(trained), "precision": precision}, pooling="temporal",
                             window_s=1.0, stride_s=1.0)
        tag(settings, tmp_path / "archive", tmp_path / f"{precision}.csv", progress=False)
        rows[precision] = pd.read_csv(tmp_path / f"{precision}.csv").set_index("path").sort_index()
    assert list(rows["fp32"].index) == [str(v) for v in videos] == list(rows["bf16"].index)
    agree = float((rows["fp32"]["label_1"] == rows["bf16"]["label_1"]).mean())
    print(f"bf16 vs fp32 top-1 agreement: {agree:.1%} of {len(videos)} videos")
    assert agree >= 0.9
    np.testing.assert_allclose(rows["bf16"]["score_1"], rows["fp32"]["score_1"], atol=0.05)


@pytest.mark.slow
def test_auto_precision_resumes_in_the_precision_the_index_was_written_in(tmp_path):
    _archive(tmp_path, 2)
    out = tmp_path / "tags.csv"
    tag(_settings(), tmp_path / "archive", out, progress=False)  # fp32, the library's default
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    proc = subprocess.run(  # --precision auto (the default): bf16 on a CPU with it, but this index is fp32
        [sys.executable, str(ROOT / "run_pipeline.py"), "tag", str(tmp_path / "archive"), "--out", str(out),
         "--labels", str(labels_file), "--templates", "none", "--model", "random:tiny-vit", "--device", "cpu",
         "--window", "0.5", "--stride", "0.25", "--decode-workers", "1", "--topk", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "precision: fp32 (auto: the index being resumed was tagged in fp32)" in proc.stderr
    assert "2 already done" in proc.stdout


@pytest.mark.slow
def test_a_long_video_split_across_two_workers_tags_as_one_worker_does(tmp_path):
    """130 s at 2 fps: with two decode workers its windows are decoded as two time ranges (a minute or more each)
    and put back in order; every window's row must be the one-worker run's."""
    t = np.arange(260)[:, None, None]
    x = np.arange(64)[None, None, :]
    frames = np.stack([(x * 4 + t * 7) % 256, (x * 2 + t * 3) % 256, (t * 11) % 256 + 0 * x], -1)  # (260, 1, 64, 3)
    write_video(tmp_path / "archive" / "long.mp4", np.repeat(frames, 64, axis=1).astype(np.uint8), fps=2)
    model = load_model("random:tiny-vit", torch.device("cpu"))
    rows = {}
    for workers in (1, 2):
        settings = _settings(runtime={"decode_workers": workers}, window_s=4.0, stride_s=2.0)
        assert settings.resolved(model).task("long.mp4", model.preprocess).split == workers
        out = tmp_path / f"w{workers}.parquet"
        tag(settings, tmp_path / "archive", out, progress=False)
        rows[workers] = [pd.read_parquet(out), pd.read_parquet(sibling(out, "segments"))]
    for one, two in zip(rows[1], rows[2]):
        assert list(one.columns) == list(two.columns)
        for column in one.columns:
            if one[column].dtype.kind == "f":
                np.testing.assert_allclose(two[column], one[column], atol=2e-3, err_msg=column)
            else:
                assert [str(v) for v in two[column]] == [str(v) for v in one[column]], column
    assert rows[1][0]["windows"].tolist() == [64]


@pytest.mark.slow
def test_retry_failed_tags_again_what_failed_and_only_that(tmp_path):
    """A file that failed is skipped by a plain rerun while its size and mtime stand; --retry-failed tags it again
    and replaces its failure row. Here the file is broken, then mended in place at the same size and mtime."""
    videos = _archive(tmp_path, 3)
    target = videos[0]
    original, st = target.read_bytes(), target.stat()

    def put(data: bytes) -> None:
        target.write_bytes(data)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    put(b"\x00" * len(original))  # same size, no container
    out = tmp_path / "tags.csv"
    assert tag(_settings(), tmp_path / "archive", out, progress=False).failed == {"error": 1}
    put(original)
    again = tag(_settings(), tmp_path / "archive", out, progress=False)
    assert (again.skipped, again.ok, again.failed) == (3, 0, {})
    assert pd.read_csv(sibling(out, "errors"))["path"].tolist() == [str(target)]
    retried = tag(_settings(), tmp_path / "archive", out, retry_failed=True, progress=False)
    assert (retried.skipped, retried.ok, retried.failed) == (2, 1, {})
    assert sorted(pd.read_csv(out)["path"]) == sorted(map(str, videos))  # one row each, none twice
    assert pd.read_csv(sibling(out, "errors")).empty


def test_forget_missing_deletes_the_rows_of_files_gone_from_disk_and_nothing_else(tmp_path):
    videos = _archive(tmp_path, 3)
    out = tmp_path / "tags.parquet"
    tag(_settings(), tmp_path / "archive", out, progress=False)
    gone = videos[1]
    gone.unlink()
    kept = tag(_settings(), tmp_path / "archive", out, progress=False)  # a plain rerun keeps the rows
    assert kept.forgotten == 0 and str(gone) in set(pd.read_parquet(out)["path"])
    forgot = tag(_settings(), tmp_path / "archive", out, forget_missing=True, progress=False)
    assert (forgot.forgotten, forgot.skipped, forgot.ok) == (1, 2, 0) and "1 gone from disk forgotten" in forgot.line()
    assert sorted(pd.read_parquet(out)["path"]) == sorted(str(v) for v in videos if v != gone)
    assert str(gone) not in set(pd.read_parquet(sibling(out, "segments"))["path"])
    index = TagIndex.open(Path(str(out) + ".index"))
    try:
        assert index.count("embeddings", f"path = '{gone}'") == 0 and index.count("videos", f"path = '{gone}'") == 0
        assert index.count("videos") == 2
    finally:
        index.close()


def test_the_progress_line_gives_the_decode_and_encode_stages_rates(tmp_path, monkeypatch, capsys):
    """In a log (stderr no terminal), each progress line carries the frames decoded and encoded a second; by the
    last video every decoded frame is encoded, so the two rates are equal there."""
    import re

    archive = tmp_path / "archive"
    for i, action in enumerate(LABELS[:3]):
        write_video(archive / f"v{i}.mp4", render(Clip("red", "square", action, seed=i, split="train"), WORLD),
                    fps=WORLD.fps)
    monkeypatch.setenv("CLIP_VIDEO_PROGRESS_EVERY", "0")  # a line at every video
    tag(_settings(), archive, tmp_path / "t.csv", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tag: ")]
    rates = [re.search(r"decoded (\d+) frames/s, encoded (\d+) frames/s$", line) for line in lines]
    assert len(lines) >= 3 and all(rates), lines
    decoded, encoded = (int(x) for x in rates[-1].groups())
    assert decoded == encoded > 0, lines[-1]
