"""What probing the tag index and the server found (issue 22), each fault reproduced and held: missing files and
odd names, a lost state.json, two writers, bit rot, readers across compaction, bad --out, one-line exits, duplicate
labels. Each test failed on the code before its fix (the closing note of issue 22 says how)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tag_world import LABELS, WORLD

import pipeline.jobs.tag.index as index_module
import pipeline.jobs.tag.maintenance as maintenance
import pipeline.jobs.tag.outputs as outputs_module
from datasets.labels import load_labels
from datasets.synthetic import write_video
from datasets.world import Clip, render
from pipeline.jobs.tag.discover import discover
from pipeline.jobs.tag.index import TagIndex, open_indexes
from pipeline.jobs.tag.index_state import writer_lock
from pipeline.jobs.tag.job import TagSettings, tag
from pipeline.jobs.tag.outputs import TableWriter, output_schemas, sibling
from pipeline.jobs.tag.query import retag, search
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

ROOT = Path(__file__).resolve().parents[1]


def _settings(**kw) -> TagSettings:
    rt = RuntimeSettings(model="random:tiny-vit", device="cpu", precision="fp32", decode_workers=1)
    asked = {k: kw.pop(k) for k in ("templates", "num_frames", "pooling") if k in kw}
    return TagSettings(rt, overrides=ProtocolOverrides(**({"templates": "none"} | asked)),
                       **(dict(labels=LABELS, window_s=0.5, stride_s=0.25, topk=3, commit_every=2) | kw))


def _video(path: Path, seed: int = 0, action: str = "growing") -> Path:
    return write_video(path, render(Clip("red", "square", action, seed=seed, split="train"), WORLD), fps=WORLD.fps)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Four short real videos to copy into each test's archive."""
    folder = tmp_path_factory.mktemp("clips")
    return [_video(folder / f"c{i}.mp4", seed=i, action=LABELS[i % len(LABELS)]) for i in range(4)]


def _archive(folder: Path, clips: list[Path], n: int = 2) -> Path:
    archive = folder / "archive"
    archive.mkdir(parents=True)
    for i in range(n):  # past the four clips, copies of them
        shutil.copy(clips[i % len(clips)], archive / f"v{i}.mp4")
    return archive


# ---- 1. missing files and broken links --------------------------------------------------------------------------

@pytest.mark.slow
def test_missing_files_and_broken_links_are_error_rows_until_they_appear(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    (archive / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    manifest = tmp_path / "list.txt"
    manifest.write_text("archive/v0.mp4\narchive/gone.mp4\narchive/later.mp4\n")
    out = tmp_path / "m.csv"
    first = tag(_settings(), manifest, out, progress=False)
    assert (first.ok, first.failed, first.skipped) == (1, {"error": 2}, 0)
    errors = pd.read_csv(sibling(out, "errors")).set_index("path")
    assert set(errors.index) == {str(archive / "gone.mp4"), str(archive / "later.mp4")}
    assert (errors["stage"] == "open").all() and (errors["reason"] == "no such file").all()
    rerun = tag(_settings(), manifest, out, progress=False)
    assert (rerun.skipped, rerun.failed_earlier) == (3, 2)  # a plain rerun says they failed (issue 23)
    assert "3 already done (2 of them failed: --retry-failed tries them again)" in rerun.line()
    again = tag(_settings(), manifest, out, progress=False, retry_failed=True)
    assert again.failed == {"error": 2}  # still missing: still failures, never "done"
    shutil.copy(clips[1], archive / "later.mp4")  # it appears: tagged now, its error row gone
    third = tag(_settings(), manifest, out, progress=False)
    assert (third.ok, third.skipped) == (1, 2)
    assert list(pd.read_csv(sibling(out, "errors"))["path"]) == [str(archive / "gone.mp4")]
    assert str(archive / "later.mp4") in set(pd.read_csv(out)["path"])

    folder_out = tmp_path / "f.csv"
    summary = tag(_settings(), archive, folder_out, progress=False)
    errors = pd.read_csv(sibling(folder_out, "errors"))
    assert summary.failed == {"error": 1}
    assert list(errors["path"]) == [str(archive / "dangling.mp4")]  # the link's own name, not its target's
    assert errors["reason"][0] == "broken link: no such file"


# ---- 9, 10, minor: symlink loops, names that are not UTF-8, names with spaces -------------------------------------

@pytest.mark.slow
def test_symlink_loops_are_error_rows_and_the_rest_is_tagged(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    (archive / "loop.mp4").symlink_to(archive / "loop.mp4")
    assert discover(archive) == ([archive / "loop.mp4", archive / "v0.mp4"], [])  # listed under its own name
    manifest = tmp_path / "list.txt"
    manifest.write_text("archive/loop.mp4\narchive/v0.mp4\n")
    assert discover(manifest) == ([archive / "loop.mp4", archive / "v0.mp4"], [])
    for source in (archive, manifest):
        out = tmp_path / f"{source.name}.csv"
        summary = tag(_settings(), source, out, progress=False)
        assert (summary.ok, summary.failed) == (1, {"error": 1})
        errors = pd.read_csv(sibling(out, "errors"))
        assert list(zip(errors["path"], errors["stage"], errors["reason"])) == [(str(archive / "loop.mp4"), "open",
                                                                                 "symlink loop")]


def test_names_that_are_not_utf8_are_tagged_stored_losslessly_and_resumed(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    odd = os.fsdecode(bytes(archive) + b"/caf\xe9 \xff.mp4")
    shutil.copy(clips[1], odd)
    out = tmp_path / "t.jsonl"
    summary = tag(_settings(), archive, out, progress=False)
    assert (summary.ok, summary.failed) == (2, {})
    [index] = open_indexes(Path(str(out) + ".index"))
    assert odd in index.stamps()  # stored and read back as the very name the file system gave
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted([str(archive / "v0.mp4"), str(archive) + "/caf\\xe9 \\xff.mp4"])
    again = tag(_settings(), archive, out, progress=False)
    assert (again.ok, again.skipped) == (0, 2)  # its stamp matched: not tagged twice
    hits = search(Path(str(out) + ".index"), "growing", topk=10, device="cpu")
    assert odd in {h["path"] for h in hits}


def test_manifest_names_keep_their_spaces_and_may_be_in_any_encoding(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    spaced = archive / " spaced .mp4"
    shutil.copy(clips[1], spaced)
    odd = os.fsdecode(bytes(archive) + b"/\xe9.mp4")
    shutil.copy(clips[2], odd)
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"archive/ spaced .mp4\n  archive/v0.mp4  \narchive/\xe9.mp4\n")
    paths, errors = discover(manifest)
    assert paths == [spaced, archive / "v0.mp4", Path(odd)] and errors == []


# ---- 2, 3: a lost state.json, the create race ----------------------------------------------------------------------

@pytest.mark.slow
def test_an_index_without_its_state_is_refused_repaired_or_restarted_never_wiped(tmp_path, clips):
    archive = _archive(tmp_path, clips, 3)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    folder = Path(str(out) + ".index")
    before = pd.read_csv(out).sort_values("path").reset_index(drop=True)
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").unlink()
    with pytest.raises(ValueError, match=r"state.json is gone; rebuild it with run_pipeline.py repair-index .*, or start over with "
                                         r"tag --restart"):
        tag(_settings(), archive, out, progress=False)
    assert (folder / "videos.lance").is_dir() and (folder / "embeddings.lance").is_dir()  # nothing deleted
    repaired = maintenance.repair_index(folder)
    assert repaired.versions == state["versions"] and repaired.next_video_id == state["next_video_id"]
    assert repaired.settings == state["settings"]
    again = tag(_settings(), archive, out, progress=False)
    assert (again.ok, again.skipped) == (0, 3)
    pd.testing.assert_frame_equal(pd.read_csv(out).sort_values("path").reset_index(drop=True), before)
    (folder / "state.json").unlink()
    fresh = tag(_settings(), archive, out, progress=False, restart=True)
    assert (fresh.ok, fresh.skipped) == (3, 0)


def test_the_writer_lock_is_taken_before_anything_is_written(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    out = tmp_path / "t.csv"
    folder = Path(str(out) + ".index")
    folder.mkdir()
    held = writer_lock(folder)  # another process is creating this index
    try:
        with pytest.raises(ValueError, match="another process is writing this tag index"):
            tag(_settings(), archive, out, progress=False)
        assert sorted(p.name for p in folder.iterdir()) == ["writer.lock"]  # no state.json of the loser's
    finally:
        held.close()


# ---- 4: two writers of the same outputs ------------------------------------------------------------------------

def test_two_writers_of_one_output_are_refused_and_temporaries_are_unique(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    other = tmp_path / "retagged.csv"
    with outputs_module.output_lock(other):
        with pytest.raises(ValueError, match="another process is writing retagged.csv"):
            retag(Path(str(out) + ".index"), ["a", "b"], other, device="cpu")
        with pytest.raises(ValueError, match="another process is writing retagged.csv"):
            tag(_settings(), archive, other, progress=False)
    assert not Path(str(other) + ".index").exists()  # refused before any work
    schema = output_schemas(1)["errors"]
    a, b = TableWriter(other, schema), TableWriter(other, schema)
    assert a.tmp != b.tmp and a.tmp.parent == other.parent
    a.discard()
    b.discard()


# ---- 5: integrity ---------------------------------------------------------------------------------------------------

def _largest_data_file(folder: Path, table: str) -> Path:
    return max((folder / f"{table}.lance" / "data").iterdir(), key=lambda p: p.stat().st_size)


def test_verify_finds_a_flipped_bit_and_reads_name_the_damaged_file(tmp_path, clips):
    archive = _archive(tmp_path, clips, 3)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    folder = Path(str(out) + ".index")
    report = maintenance.verify_index(folder)
    assert report.ok and report.files > 0 and report.unchecked == 0, report
    victim = _largest_data_file(folder, "embeddings")
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x80  # a float16's sign, somewhere in the vectors
    victim.write_bytes(bytes(data))
    report = maintenance.verify_index(folder)
    assert not report.ok and report.damaged == [f"embeddings.lance/data/{victim.name}"], report
    victim.write_bytes(bytes(data[: len(data) // 2]))  # now a read fails too
    with pytest.raises(index_module.IndexDamaged, match=rf"damaged \(table embeddings, file data/{victim.name}\).*"
                                                        r"run_pipeline.py verify"):
        search(folder, "growing", device="cpu")
    from fastapi.testclient import TestClient

    from pipeline.jobs.serve.app import create_app

    with TestClient(create_app(folder)) as client:  # the server says so too, and goes on serving
        answer = client.get("/api/search", params={"q": "growing"})
        assert answer.status_code == 500 and f"file data/{victim.name}" in answer.json()["detail"]
        assert client.get("/api/labels").status_code == 200


# ---- 8: readers across compaction -----------------------------------------------------------------------------------

def test_a_reader_open_across_compaction_still_reads(tmp_path, monkeypatch, clips):
    from test_tag_index import _fill
    from test_tag_index import _settings as index_settings

    monkeypatch.setattr(index_module, "COMPACT_EVERY", 4)
    writer = TagIndex.create(tmp_path / "i", index_settings(), 32)
    _fill(writer, 6, commit_every=2)  # 3 commits
    reader = TagIndex.open(tmp_path / "i")
    before = reader.count("embeddings")
    _fill(writer, 4, commit_every=2, seed=3, prefix="/more")  # the 4th commit compacts
    assert writer.state.commits == 5
    assert reader.count("embeddings") == before  # the version it holds is kept
    assert sum(b.num_rows for b in reader.scan("embeddings", ["path"])) == before
    monkeypatch.setattr(index_module, "KEEP_VERSIONS", 0)  # now versions go at once: the reader reopens and retries
    _fill(writer, 6, commit_every=2, seed=4, prefix="/again")  # the 8th commit compacts
    hits = reader.nearest(np.ones(32, np.float32), 5, columns=["path"])
    assert hits.num_rows == 5
    assert reader.count("embeddings") == writer.count("embeddings")
    stale = reader.state  # a reader that read state.json just before the writer compacted its versions away
    _fill(writer, 8, commit_every=2, seed=5, prefix="/last")
    with pytest.raises(index_module.IndexDamaged):
        TagIndex(tmp_path / "i", stale, write=False)
    reads = iter([stale])
    real_read = index_module.IndexState.read
    monkeypatch.setattr(index_module.IndexState, "read", classmethod(
        lambda cls, folder: next(reads, None) or real_read(folder)))
    assert TagIndex.open(tmp_path / "i").count("embeddings") == writer.count("embeddings")  # it read state again


# ---- 11: bad --out ----------------------------------------------------------------------------------------------

def test_bad_out_is_refused_before_any_work(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ValueError, match=r"--out .*dir.csv: is a folder"):
        tag(_settings(), archive, tmp_path / "dir.csv", progress=False)
    (tmp_path / "f.csv.index").write_text("a file where the index folder goes")
    with pytest.raises(ValueError, match=r"f.csv.index: is a file, not a tag index folder"):
        tag(_settings(), archive, tmp_path / "f.csv", progress=False)
    (tmp_path / "s.segments.csv").mkdir()
    with pytest.raises(ValueError, match=r"s.segments.csv: is a folder"):
        tag(_settings(), archive, tmp_path / "s.csv", progress=False)


# ---- 13: duplicate labels ---------------------------------------------------------------------------------------

def test_duplicate_labels_are_refused_naming_them(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("running\njumping\nRunning\njumping\nswimming\n")
    with pytest.raises(ValueError, match=r"labels.txt.*duplicate labels: 'jumping' \(lines 2, 4\), 'running' "
                                         r"\(lines 1, 3\)"):
        load_labels(str(labels))
    with pytest.raises(ValueError, match=r"duplicate labels: 'a'"):
        _settings(labels=("a", "b", "a"))
    for name in ("ucf101", "hmdb51", "kinetics400", "kinetics600", "kinetics700", "ssv2"):
        assert len(set(load_labels(name))) == len(load_labels(name)), name  # the shipped lists pass


# ---- 12: one line on every way out ----------------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_pipeline.py"), *args]


def _tag_cmd(archive: Path, out: Path, labels: Path, *extra: str) -> list[str]:
    return _cli("tag", str(archive), "--out", str(out), "--labels", str(labels), "--templates", "none",
                "--model", "random:tiny-vit", "--device", "cpu", "--precision", "fp32", "--window", "0.5",
                "--stride", "0.25", "--decode-workers", "2", "--commit-every", "1", *extra)


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_tag_says_one_line_and_leaves_no_worker(tmp_path, clips, sig):
    archive = _archive(tmp_path, clips, 12)
    out = tmp_path / "t.csv"
    state = Path(str(out) + ".index") / "state.json"
    proc = subprocess.Popen(_tag_cmd(archive, out, _labels(tmp_path)), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["commits"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C reaches every process of the group; SIGTERM likewise
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if not line.startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and lines[0].endswith(
        "videos committed; rerun the same command to resume"), err
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], left  # no worker outlives it, none a zombie
    final = subprocess.run(_tag_cmd(archive, out, _labels(tmp_path)), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert sorted(pd.read_csv(out)["path"]) == sorted(str(p) for p in archive.iterdir())


@pytest.mark.slow
def test_a_damaged_index_is_one_line_naming_the_file(tmp_path, clips):
    archive = _archive(tmp_path, clips, 2)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    folder = Path(str(out) + ".index")
    victim = _largest_data_file(folder, "embeddings")
    victim.write_bytes(victim.read_bytes()[:100])
    run = subprocess.run(_cli("search", str(folder), "growing", "--device", "cpu"), cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"error: {folder}: damaged (table embeddings, file data/{victim.name}): run "
                                  f"run_pipeline.py verify {folder}"), run.stderr
    run = subprocess.run(_cli("verify", str(folder)), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and f"embeddings.lance/data/{victim.name}" in run.stdout, run.stdout + run.stderr


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted for the test (as root, as CI runs), unmounted after."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (CI does)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_and_a_read_only_index_are_one_line_and_keep_what_was_committed(tmp_path, tmpfs, clips):
    archive = _archive(tmp_path, clips, 40)
    out = tmpfs / "t.csv"
    run = subprocess.run(_tag_cmd(archive, out, _labels(tmp_path)), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    lines = [line for line in run.stderr.splitlines() if not line.startswith("precision:")]
    assert run.returncode == 2 and lines == [f"error: {out}: no space left on device; committed work is kept"], \
        run.stderr
    assert not list(Path(str(out) + ".index").glob("*.tmp")) and not list(tmpfs.glob("*.tmp"))
    report = maintenance.verify_index(Path(str(out) + ".index"))
    assert report.ok, report
    committed = TagIndex.open(Path(str(out) + ".index")).count("videos")
    assert committed > 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    run = subprocess.run(_tag_cmd(archive, out, _labels(tmp_path)), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    lines = [line for line in run.stderr.splitlines() if not line.startswith("precision:")]
    assert run.returncode == 2 and len(lines) == 1 and "read-only file system" in lines[0], run.stderr
    assert TagIndex.open(Path(str(out) + ".index")).count("videos") == committed


@pytest.mark.slow
def test_an_index_that_is_locked_by_a_live_writer_is_refused_in_one_line(tmp_path, clips):
    archive = _archive(tmp_path, clips, 1)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    held = writer_lock(Path(str(out) + ".index"))
    try:
        run = subprocess.run(_tag_cmd(archive, out, _labels(tmp_path)), cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    finally:
        held.close()
    assert run.returncode == 2 and run.stderr.strip().endswith("another process is writing this tag index; wait "
                                                               "for it or use another --out"), run.stderr


# ---- 6, 7, minor: the server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, clips):
    from fastapi.testclient import TestClient

    from pipeline.jobs.serve.app import create_app

    root = tmp_path_factory.mktemp("served")
    archive = _archive(root, clips, 3)
    out = root / "t.csv"
    tag(_settings(), archive, out, progress=False)
    folder = Path(str(out) + ".index")
    ids = {Path(r["path"]).name: r["video_id"] for r in
           TagIndex.open(folder).table("videos").to_table(columns=["path", "video_id"]).to_pylist()}
    with TestClient(create_app(folder, token="s3cret")) as client:
        yield client, archive, ids


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_bad_range_requests_leak_no_descriptor(served):
    client, _, ids = served
    auth = {"Authorization": "Bearer s3cret"}
    url = f"/api/videos/{ids['v0.mp4']}/media"
    assert client.get(url, headers=auth | {"Range": "bytes=0-9"}).status_code == 206
    before = _open_fds()
    codes = set()
    for i in range(100):
        bad = "bytes=999999999-" if i % 2 else "bytes=abc"
        codes.add(client.get(url, headers=auth | {"Range": bad}).status_code)
    assert codes <= {400, 416} and codes, codes
    assert _open_fds() <= before + 2  # none of the 100 left its descriptor open


def test_head_and_a_lowercase_bearer_are_answered(served):
    client, _, ids = served
    url = f"/api/videos/{ids['v0.mp4']}/media"
    head = client.head(url, headers={"Authorization": "bearer s3cret"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == (served[1] / "v0.mp4").stat().st_size
    assert client.get("/api/labels", headers={"Authorization": "BEARER s3cret"}).status_code == 200
    assert client.get("/api/labels", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_fifo_swapped_in_for_a_tagged_file_is_a_409_not_a_hang(served):
    client, archive, ids = served
    victim = archive / "v2.mp4"
    victim.unlink()
    os.mkfifo(victim)
    auth = {"Authorization": "Bearer s3cret"}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.get, f"/api/videos/{ids['v2.mp4']}/media", headers=auth)
        assert answer.result(timeout=20).status_code == 409
        thumb = pool.submit(client.get, f"/api/videos/{ids['v2.mp4']}/thumbnail", params={"t": 0.5}, headers=auth)
        assert thumb.result(timeout=20).headers["x-thumbnail"] == "placeholder"
    assert client.get("/api/labels", headers=auth).status_code == 200


# ---- found in review (after issue 22) -----------------------------------------------------------------------------

def test_a_failure_while_the_outputs_are_finished_keeps_the_previous_ones_and_no_temporaries(tmp_path, monkeypatch,
                                                                                              clips):
    """A full disk (or a signal) while the second of the three outputs is being flushed: OUT was already renamed
    into place, its siblings were not, and their temporaries stayed. Now all three are finished before any is
    renamed."""
    archive = _archive(tmp_path, clips, 2)
    out = tmp_path / "t.csv"
    tag(_settings(), archive, out, progress=False)
    outputs = [out, sibling(out, "segments"), sibling(out, "errors")]
    before = [p.read_bytes() for p in outputs]
    real = TableWriter.finish
    calls = []

    def full_disk(self):
        calls.append(self.path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self)

    monkeypatch.setattr(TableWriter, "finish", full_disk)
    with pytest.raises(OSError, match="No space left"):
        retag(Path(str(out) + ".index"), LABELS[::-1], out, device="cpu")
    assert [p.read_bytes() for p in outputs] == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_stored_file_missing_from_its_manifest_keeps_its_rows(tmp_path, clips):
    """With a manifest, a stored file that is gone now (an unmounted drive) was re-tagged into an error row, and its
    embeddings deleted; its rows stay until --forget-missing, as for a folder."""
    archive = _archive(tmp_path, clips, 2)
    manifest = tmp_path / "list.txt"
    manifest.write_text("archive/v0.mp4\narchive/v1.mp4\n")
    out = tmp_path / "m.csv"
    tag(_settings(), manifest, out, progress=False)
    folder = Path(str(out) + ".index")
    vectors = TagIndex.open(folder).count("embeddings")
    (archive / "v1.mp4").rename(tmp_path / "v1.away")
    again = tag(_settings(), manifest, out, progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, {}, 2)
    assert TagIndex.open(folder).count("embeddings") == vectors
    assert set(pd.read_csv(out)["status"]) == {"ok"} and len(pd.read_csv(out)) == 2
    forgot = tag(_settings(), manifest, out, forget_missing=True, progress=False)
    assert forgot.forgotten == 1
    assert pd.read_csv(sibling(out, "errors"))["path"].tolist() == [str(archive / "v1.mp4")]  # now it is missing


def test_a_file_that_changes_while_it_is_decoded_is_tagged_again_next_time(tmp_path, monkeypatch, clips):
    """The stamp was taken after decoding: a file still being copied was decoded truncated, stored with its final
    size and time, and never tagged again. The stamp now comes from before the decode."""
    import pipeline.jobs.tag.job as job_module

    archive = _archive(tmp_path, clips, 1)
    real = job_module.embed_windows

    def growing_while_decoded(tasks, *args, **kwargs):
        for task, video, error in real(tasks, *args, **kwargs):
            with open(task.path, "ab") as f:  # the copy goes on
                f.write(b"\0" * 16)
            yield task, video, error

    monkeypatch.setattr(job_module, "embed_windows", growing_while_decoded)
    out = tmp_path / "t.csv"
    assert tag(_settings(), archive, out, progress=False).ok == 1
    monkeypatch.setattr(job_module, "embed_windows", real)
    assert tag(_settings(), archive, out, progress=False).skipped == 0  # changed since its stamp: tagged again


def test_concurrent_reopens_never_show_a_reader_no_tables(tmp_path, monkeypatch):
    """serve reads from a thread pool: a reopen emptied the open tables before refilling them, so another request
    found none (an empty hit list, or a KeyError as a 500)."""
    from test_tag_index import _fill
    from test_tag_index import _settings as index_settings

    writer = TagIndex.create(tmp_path / "i", index_settings(), 32)
    _fill(writer, 4, commit_every=2)
    reader = TagIndex.open(tmp_path / "i")
    _fill(writer, 4, commit_every=2, seed=3, prefix="/more")  # the state on disk is newer than the reader's
    real_open = TagIndex._opened

    def slow(self, state):
        time.sleep(0.3)
        return real_open(self, state)

    monkeypatch.setattr(TagIndex, "_opened", slow)
    seen = []
    with ThreadPoolExecutor(1) as pool:
        reopen = pool.submit(reader._reopened)
        while not reopen.done():
            seen.append(reader.table("embeddings") is not None)
        assert reopen.result() is True
    assert seen and all(seen)
    assert reader.count("embeddings") == writer.count("embeddings")


def test_verify_during_a_writers_compaction_reports_no_false_damage(tmp_path, monkeypatch):
    """verify read state.json once: a writer's commit and compaction while it hashed deleted files it had listed,
    and a healthy index was reported damaged."""
    from test_tag_index import _fill
    from test_tag_index import _settings as index_settings

    monkeypatch.setattr(index_module, "COMPACT_EVERY", 2)
    monkeypatch.setattr(index_module, "KEEP_VERSIONS", 0)
    writer = TagIndex.create(tmp_path / "i", index_settings(), 32)
    _fill(writer, 4, commit_every=2)
    real_differing, commits = maintenance.differing, []

    def writer_commits_meanwhile(folder, files, **kw):
        if not commits:  # once, while the first pass hashes: two commits, the second compacts
            commits.append(1)
            _fill(writer, 4, commit_every=2, seed=7, prefix="/meanwhile")
        return real_differing(folder, files, **kw)

    monkeypatch.setattr(maintenance, "differing", writer_commits_meanwhile)
    report = maintenance.verify_index(tmp_path / "i")
    assert report.ok, report.line()
    assert commits == [1]
