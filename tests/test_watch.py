"""watch: live windows placed as tag places them, scored as tag scores them, merged into events; a loopback UDP
stream that drops and comes back; bounded latency by dropping what the model cannot keep up with."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from servers import chromium, free_port, wait_for_port

from pipeline.jobs.watch import Events
from pipeline.video.live import LiveFrame, WindowSampler
from pipeline.video.samplers import sliding_windows

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["moving left", "moving right", "moving up", "moving down"]


def test_online_windows_take_the_frames_sliding_windows_takes():
    rng = np.random.default_rng(0)
    times = np.cumsum(np.r_[0.0, rng.uniform(0.02, 0.09, 200)])  # variable frame rate, ~10 s
    sampler, got = WindowSampler(window_s=2.0, stride_s=0.7, num_frames=6), {}
    for i, t in enumerate(times):
        for n, start, end, frames in sampler.push(LiveFrame(i, 0, float(t), 0.0, np.zeros((1, 1, 3), np.uint8))):
            got[n] = (start, end, [f.number for f in frames])
    offline = sliding_windows(times, window_s=2.0, stride_s=0.7, frames_per_window=6, duration=float(times[-1]))
    full = [w for w in offline if w.end_s <= times[-1] and abs(w.start_s / 0.7 - round(w.start_s / 0.7)) < 1e-9]
    assert len(got) >= len(full) - 1 >= 10
    for n, w in enumerate(full):
        if n in got:
            assert got[n][:2] == pytest.approx((w.start_s, w.end_s)) and got[n][2] == w.indices.tolist(), n


def test_a_new_connection_starts_the_windows_again():
    sampler, done = WindowSampler(window_s=1.0, stride_s=1.0, num_frames=2), []
    for connection, offset in ((0, 0), (1, 100)):
        for i in range(30):
            done += [(connection, n) for n, *_ in sampler.push(LiveFrame(offset + i, connection, i / 10, 0.0,
                                                                         np.zeros((1, 1, 3), np.uint8)))]
    assert done == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # 2.75 s, the last instant, before 2.8


def _record(n, label, score, connection=0):
    return {"labels": [label], "scores": [score], "connection": connection, "stream_start_s": float(n),
            "stream_end_s": n + 2.0, "wall_start": 100.0 + n, "wall_end": 102.0 + n}


def test_adjacent_windows_of_one_label_merge_into_an_event_closed_by_the_next():
    events = Events(above=0.5)
    closed = [events.add(_record(n, label, score)) for n, (label, score) in enumerate(
        [("a", 0.6), ("a", 0.9), ("a", 0.7), ("b", 0.8), ("b", 0.3), ("b", 0.6)])]
    assert closed[:3] == [None, None, None]
    assert closed[3] == {"type": "event", "label": "a", "connection": 0, "start_s": 0.0, "end_s": 4.0,
                         "wall_start": 100.0, "wall_end": 104.0, "peak": 0.9, "windows": 3}
    assert closed[4]["label"] == "b" and closed[4]["windows"] == 1  # below `above`: no action, the event ends
    assert closed[5] is None and events.close()["start_s"] == 5.0
    assert events.add(_record(9, "c", 0.9, connection=1)) is None  # another connection opens its own


def _run(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def clip(tmp_path):
    from datasets.synthetic import moving_square_frames, write_video

    frames = np.concatenate([moving_square_frames(a, "red", num_frames=48, seed=i) for i, a in
                             enumerate(["moving left", "moving up", "moving right"])])
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return write_video(tmp_path / "videos" / "clip.mp4", frames, fps=24, options={"crf": "18", "g": "12"})


def test_watching_a_file_gives_tags_windows_and_scores(tmp_path, clip):
    """watch on a file (no --realtime: nothing dropped) and tag on it, same model and windows: every full window of
    watch's is one of tag's, with the same labels and scores (tag's from its float16 vectors)."""
    common = ["--labels", tmp_path / "labels.txt", "--model", "random:tiny-vit", "--device", "cpu", "--precision",
              "fp32", "--window", "2", "--stride", "1"]
    tagged = _run("tag", clip.parent, "--out", tmp_path / "tags.csv", "--topk", "3", "--decode-workers", "1", *common)
    assert tagged.returncode == 0, tagged.stderr
    watched = _run("watch", clip, "--out", tmp_path / "w.jsonl", *common)
    assert watched.returncode == 0, watched.stderr
    windows = [r for r in _lines(tmp_path / "w.jsonl") if r["type"] == "window"]
    segments = pd.read_csv(tmp_path / "tags.segments.csv")
    segments = segments[segments.kind == "window"].set_index("start_s")
    assert [w["stream_start_s"] for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0]  # 6 s: the full windows
    for w in windows:
        row = segments.loc[w["stream_start_s"]]
        assert w["labels"] == [row.label_1, row.label_2, row.label_3]
        np.testing.assert_allclose(w["scores"], [row.score_1, row.score_2, row.score_3], atol=1e-3)
    # the events: tag's windows (computed apart) merged by the documented rule, adjacent windows of one top label
    expected: list[list] = []
    for start in [w["stream_start_s"] for w in windows]:
        row = segments.loc[start]
        if expected and expected[-1][0] == row.label_1:
            expected[-1][2] = row.end_s
        else:
            expected.append([row.label_1, start, row.end_s])
    events = [[e["label"], e["start_s"], e["end_s"]] for e in _lines(tmp_path / "w.jsonl") if e["type"] == "event"]
    assert events == expected and len(events) >= 1
    summary = _lines(tmp_path / "w.jsonl")[-1]
    assert summary == {"type": "summary", "windows": 5, "events": len(events), "dropped": 0, "gaps": 0}
    assert "5 windows" in watched.stderr.splitlines()[-1]


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "notes.txt").write_text("not a video")
    for source, says in ((tmp_path / "missing.mp4", "no such file, and not a stream URL"),
                         (tmp_path / "notes.txt", "cannot open"),
                         ("rtsp://127.0.0.1:9/none", "cannot open")):
        out = _run("watch", source, "--labels", tmp_path / "labels.txt", "--model", "random:tiny-vit", "--device",
                   "cpu", "--precision", "fp32", timeout=60)
        assert out.returncode == 2, out.stderr
        [line] = out.stderr.strip().splitlines()
        assert line.startswith(f"error: {source}: ") and says in line, line


SENDER = """
import sys, time, av
from datasets.synthetic import moving_square_frames
port, seconds, action = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
frames = moving_square_frames(action, "red", num_frames=int(seconds * 24), seed=1)
with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as out:
    stream = out.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream.options = {"g": "12", "tune": "zerolatency", "preset": "ultrafast"}
    start = time.monotonic()
    for i, f in enumerate(frames):
        time.sleep(max(0.0, i / 24 - (time.monotonic() - start)))
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
"""


@pytest.mark.slow
def test_a_loopback_udp_stream_that_drops_comes_back_as_a_gap_and_sigint_exits_0(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    env = os.environ | {"PYTHONPATH": str(ROOT)}

    def send(seconds: float, action: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SENDER, str(port), str(seconds), action], env=env)

    sender = send(20, "moving left")
    time.sleep(0.5)
    watcher = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "watch", f"udp://127.0.0.1:{port}",
                                "--labels", tmp_path / "labels.txt", "--model", "random:tiny-vit", "--device", "cpu",
                                "--window", "1", "--stride", "0.5", "--out", tmp_path / "w.jsonl"],
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(r["type"] == "window" for r in _safe_lines(tmp_path)) < 3:
            time.sleep(0.2)
        sender.kill()  # the stream drops mid-way
        sender.wait()
        time.sleep(7)  # longer than the read timeout: watch sees the stall
        sender = send(8, "moving right")  # and comes back
        while time.monotonic() < deadline and not any(r["type"] == "window" and r["connection"] > 0
                                                      for r in _safe_lines(tmp_path)):
            time.sleep(0.2)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    finally:
        for p in (sender, watcher):
            if p.poll() is None:
                p.kill()
    assert watcher.returncode == 0, err
    records = _lines(tmp_path / "w.jsonl")
    kinds = [r["type"] for r in records]
    assert "gap" in kinds and kinds[-1] == "summary"
    first_gap = kinds.index("gap")
    assert any(r["type"] == "window" and r["connection"] == 0 for r in records[:first_gap])
    assert any(r["type"] == "window" and r["connection"] > 0 for r in records[first_gap:])
    gap = records[first_gap]
    assert gap["wall_end"] - gap["wall_start"] >= 5  # the time the stream was away
    assert records[-1]["gaps"] >= 1 and "windows" in err.splitlines()[-1]


def _safe_lines(tmp_path):
    path = tmp_path / "w.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


@pytest.mark.slow
def test_a_model_slower_than_the_stream_drops_the_oldest_windows_and_counts_them(tmp_path, clip):
    """Windows every 0.1 s of a file played in real time, through a full-size ViT-B/32 on these cores: the model
    cannot keep up, so waiting windows are dropped, each counted; the same file read as fast as it decodes drops
    nothing (the reader waits for the model, which is slower than decoding)."""
    common = ["--labels", tmp_path / "labels.txt", "--model", "random:ViT-B/32", "--device", "cpu", "--precision",
              "fp32", "--window", "1"]
    live = _run("watch", clip, "--realtime", "--out", tmp_path / "live.jsonl", "--stride", "0.1", *common)
    assert live.returncode == 0, live.stderr
    records = _lines(tmp_path / "live.jsonl")
    decided = [r["window"] for r in records if r["type"] == "window"]
    summary = records[-1]
    assert summary["dropped"] > 0 and decided == sorted(decided)
    # every window of the 6 s clip is either decided or counted as dropped
    assert len(decided) + summary["dropped"] == 51 == summary["windows"] + summary["dropped"]
    assert max(r["dropped_so_far"] for r in records if r["type"] == "window") <= summary["dropped"]
    # read as fast as it decodes, every 0.5 s (11 windows, still more than the 2 that may wait for the model)
    fast = _run("watch", clip, "--out", tmp_path / "file.jsonl", "--stride", "0.5", *common)
    assert fast.returncode == 0, fast.stderr
    assert _lines(tmp_path / "file.jsonl")[-1]["dropped"] == 0
    assert sum(r["type"] == "window" for r in _lines(tmp_path / "file.jsonl")) == 11


@pytest.mark.slow
def test_the_live_page_shows_the_latest_window_the_timeline_and_the_events(tmp_path, clip):
    """watch --serve: in Chromium, the page shows the window watch last decided (its number and label as written to
    --out), a bar per recent window, and the closed events; it listens on 127.0.0.1 only."""
    from playwright.sync_api import sync_playwright
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "watch", str(clip), "--realtime",
                             "--labels", str(tmp_path / "labels.txt"), "--model", "random:tiny-vit", "--device", "cpu",
                             "--precision", "fp32", "--window", "1", "--stride", "0.5", "--above", "0.3",
                             "--out", str(tmp_path / "w.jsonl"), "--serve", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc, "the page")
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.split() and all(line.split()[3].startswith("127.0.0.1:") for line in listening.splitlines())
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("Number(document.getElementById('now').dataset.window) >= 4", timeout=30_000)
            shown = page.eval_on_selector("#now", "e => [Number(e.dataset.window), e.dataset.label, e.textContent]")
            bars = page.eval_on_selector_all("#timeline rect", "rs => rs.length")
            snapshot = json.loads(page.evaluate("fetch('/api/live').then(r => r.text())"))
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    windows = {r["window"]: r for r in _lines(tmp_path / "w.jsonl") if r["type"] == "window"}
    number, label, text = shown
    assert windows[number]["labels"][0] == label and label in text and f"window {number}" in text
    assert bars >= number  # a bar for each window so far (the page polls: it may trail by one)
    events = [r for r in _lines(tmp_path / "w.jsonl") if r["type"] == "event"]
    assert [e for e in snapshot["events"] if e["type"] == "event"][::-1] == events[:len(snapshot["events"])]


def test_a_live_source_gives_the_frames_the_reader_gives_rotation_and_scaling_included(tmp_path):
    """A file with a display rotation, read by LiveSource (what watch decodes) and by the PyAV reader (what tag
    decodes), with the same short-side cap: the same frames."""
    from videos import rotated

    from pipeline.video.live import LiveSource
    from pipeline.video.pyav_reader import PyAVReader

    path = rotated(tmp_path / "rotated.mp4", n=12, rotation=90)
    live = [f.rgb for f in LiveSource(str(path), resize=48) if isinstance(f, LiveFrame)]
    with PyAVReader(path, resize=48) as reader:
        expected = reader.read_frames(np.arange(reader.num_frames))
        assert reader.info.rotation == 90
    assert len(live) == len(expected) and all(np.array_equal(a, b) for a, b in zip(live, expected))
