"""Keyframe sampling (``--sampling keyframes``): each sampled instant takes the keyframe nearest it, decoded alone.
Checked against full decodes with PyAV written here, on streams with B-frames, B-pyramids and open GOPs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from videos import encode, gop_variety, h264_bframes, reference_frames

from pipeline.video.open import DecodeRequest, decode_request
from pipeline.video.pyav_reader import PyAVReader
from pipeline.video.samplers import Sampling, nearest_keyframes


def test_nearest_keyframes_takes_the_nearest_in_time_and_the_earlier_on_a_tie():
    t = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.9])  # variable frame rate
    keys = np.array([0, 4, 7])
    # 1 -> 0 (0.1 from 0, 0.3 from 4); 2 -> 0 (a tie at 0.2: the earlier); 5 -> 4; 6 -> 4 (0.15 vs 0.35); 7 -> 7
    assert nearest_keyframes(np.array([[0, 1, 2], [5, 6, 7]]), keys, t).tolist() == [[0, 0, 0], [4, 4, 7]]


def test_keyframes_read_alone_equal_a_full_decode_and_decode_nothing_else(tmp_path):
    for video in gop_variety(tmp_path):
        reader = PyAVReader(video)
        keys = reader.keyframes
        assert keys is not None and len(keys) >= 4, video.name
        got = reader.read_frames(keys)
        full = reference_frames(video)
        assert all(np.array_equal(got[k], full[int(i)]) for k, i in enumerate(keys)), video.name
        assert reader.frames_decoded <= len(keys) + 1, (video.name, reader.frames_decoded)  # +1: the rotation probe
        reader.close()


def test_a_decode_request_for_keyframes_takes_the_nearest_and_records_their_times(tmp_path):
    video = h264_bframes(tmp_path / "v.mp4", n=120, gop=12)
    exact = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8)))
    keyed = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8), frame_choice="keyframes"))
    with PyAVReader(video) as reader:
        keys, times = reader.keyframes, reader.timestamps
    assert keyed.indices.tolist() == nearest_keyframes(exact.indices, keys, times).tolist() != exact.indices.tolist()
    assert set(keyed.indices.tolist()) <= set(keys.tolist())
    np.testing.assert_array_equal(keyed.timestamps, times[keyed.indices])  # the keyframes' own times
    full = reference_frames(video)
    assert all(np.array_equal(f, full[int(i)]) for f, i in zip(keyed.frames, keyed.indices))
    assert not keyed.warnings


def test_too_few_keyframes_decode_the_exact_frames_and_say_so(tmp_path):
    video = encode(tmp_path / "one_gop.mp4", 60, options={"g": "250", "bf": "2", "x264-params": "scenecut=0"})  # one keyframe
    exact = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8)))
    keyed = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8), frame_choice="keyframes"))
    assert keyed.indices.tolist() == exact.indices.tolist()
    assert np.array_equal(keyed.frames, exact.frames)
    assert keyed.warnings == ("keyframe sampling: 1 keyframe for 8 sampled frames; decoded the exact frames instead",)


def test_tag_windows_take_their_nearest_keyframes(tmp_path):
    """decode_windows, the tag worker: each window's frames are the keyframes nearest its instants, resized as exact
    frames are; a video with fewer keyframes than windows is decoded exactly, with the warning."""
    from clip_model.config import PreprocessConfig
    from pipeline.features.frame_geometry import FrameGeometry
    from pipeline.features.window_decode import WindowTask, decode_windows
    from pipeline.video.samplers import sliding_windows

    def run(task):
        gen, chunks = decode_windows(task), []
        try:
            header = next(gen)
            while True:
                chunks.append(next(gen))
        except StopIteration as stop:
            return header, chunks, stop.value

    geometry = FrameGeometry.of(PreprocessConfig(image_size=32))
    video = h264_bframes(tmp_path / "v.mp4", n=150, gop=10)  # 6 s at 25 fps, a keyframe every 0.4 s
    header, chunks, warnings = run(WindowTask(str(video), geometry, num_frames=4, window_s=2.0, stride_s=1.0,
                                              backend="pyav", frame_choice="keyframes"))
    with PyAVReader(video) as reader:
        keys, times = reader.keyframes, reader.timestamps
        windows = sliding_windows(times, window_s=2.0, stride_s=1.0, frames_per_window=4, duration=reader.duration)
    full = reference_frames(video)
    expected = nearest_keyframes(np.stack([w.indices for w in windows]), keys, times)  # (W, 4)
    assert len(header.bounds) == len(windows) and not warnings
    for chunk in chunks:
        for w, positions in enumerate(chunk.positions):
            want = geometry.resize_crop(np.stack([full[int(i)] for i in expected[chunk.first + w]]))
            np.testing.assert_array_equal(chunk.frames[positions], want)
    sparse = encode(tmp_path / "sparse.mp4", 150, options={"g": "250", "x264-params": "scenecut=0"})
    _, _, warnings = run(WindowTask(str(sparse), geometry, num_frames=4, window_s=2.0, stride_s=1.0, backend="pyav",
                                    frame_choice="keyframes"))
    assert warnings == ("keyframe sampling: 1 keyframe for 5 windows; decoded the exact frames instead",)


@pytest.mark.slow
def test_tag_records_its_sampling_and_refuses_to_resume_with_another(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from datasets.synthetic import moving_square_frames, write_video

    for i in range(2):
        write_video(tmp_path / "videos" / f"{i}.mp4", moving_square_frames("moving left", "red", num_frames=48, seed=i),
                    options={"g": "6"})
    (tmp_path / "labels.txt").write_text("moving left\nmoving right\n")
    cmd = [sys.executable, str(Path(__file__).parents[1] / "run_pipeline.py"), "tag", str(tmp_path / "videos"),
           "--out", str(tmp_path / "tags.csv"), "--labels", str(tmp_path / "labels.txt"), "--model", "random:tiny-vit",
           "--device", "cpu", "--precision", "fp32", "--decode-workers", "1", "--window", "1", "--stride", "1"]
    done = subprocess.run([*cmd, "--sampling", "keyframes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "tags.csv.index" / "state.json").read_text())
    assert state["settings"]["sampling"] == "keyframes"
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "sampling ('keyframes' -> 'exact')" in refused.stderr


def test_the_index_records_the_seconds_of_each_windows_frames_the_keyframes_with_keyframe_sampling(tmp_path):
    """Each segment row's frame_s: the times of the frames its vector was encoded from, so a keyframe-sampled
    window says which frames it saw (the nearest keyframes), and an exact one its sampled instants."""
    from pipeline.jobs.tag.index import TagIndex
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
    from pipeline.video.samplers import sliding_windows

    (tmp_path / "videos").mkdir()
    video = h264_bframes(tmp_path / "videos" / "v.mp4", n=150, gop=10)  # 6 s at 25 fps, a keyframe every 0.4 s
    with PyAVReader(video) as reader:
        keys, times = reader.keyframes, reader.timestamps
        windows = sliding_windows(times, window_s=2.0, stride_s=1.0, frames_per_window=4, duration=reader.duration)
    exact = np.stack([w.indices for w in windows])  # (W, 4)
    runtime = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=1)
    for sampling, frames in (("exact", exact), ("keyframes", nearest_keyframes(exact, keys, times))):
        settings = TagSettings(runtime, ("a", "b"), overrides=ProtocolOverrides(templates="none", num_frames=4),
                               window_s=2.0, stride_s=1.0, sampling=sampling)
        tag(settings, tmp_path / "videos", tmp_path / f"{sampling}.csv", progress=False)
        index = TagIndex.open(tmp_path / f"{sampling}.csv.index")
        rows = sorted(index.table("embeddings").to_table(columns=["kind", "window", "frame_s"]).to_pylist(),
                      key=lambda r: r["window"])
        assert [r["frame_s"] for r in rows if r["kind"] == "video"] == [None]
        got = np.array([r["frame_s"] for r in rows if r["kind"] == "segment"])  # (W, 4)
        np.testing.assert_allclose(got, times[frames], atol=1e-4)
    assert not np.allclose(times[exact], times[nearest_keyframes(exact, keys, times)])  # the two differ here
