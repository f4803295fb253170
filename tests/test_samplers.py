"""Samplers as tables against independent formulas (written out here, not calling the code under test)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.video.samplers import (
    Sampling,
    dense_indices,
    fps_indices,
    multi_view_indices,
    segment_indices,
    sliding_windows,
    time_to_index,
    uniform_time_indices,
    window_bounds,
)


@pytest.mark.parametrize("n, k", [(1, 8), (5, 8), (8, 8), (9, 8), (100, 8), (301, 16), (3, 1), (1000, 3)])
def test_segments_test_mode(n, k):
    assert segment_indices(n, k).tolist() == [math.floor((i + 0.5) * n / k) for i in range(k)]


@pytest.mark.parametrize("n, k", [(100, 8), (7, 8), (250, 16), (1, 4)])
def test_segments_train_mode_stays_in_its_segment_and_is_seeded(n, k):
    a, b = segment_indices(n, k, mode="train", seed=3), segment_indices(n, k, mode="train", seed=3)
    assert np.array_equal(a, b)
    for i, idx in enumerate(a):
        lo, hi = math.floor(i * n / k), max(math.floor((i + 1) * n / k), math.floor(i * n / k) + 1)
        assert lo <= idx < hi
    draws = {tuple(segment_indices(100, 8, mode="train", seed=s)) for s in range(20)}
    assert len(draws) > 10  # really random across seeds


@pytest.mark.parametrize("n, clip_len, interval, clips", [(100, 8, 2, 1), (100, 8, 2, 3), (64, 16, 4, 10), (15, 8, 2, 1)])
def test_dense_clips_test_mode(n, clip_len, interval, clips):
    span = (clip_len - 1) * interval + 1
    room = max(n - span + 1, 1)
    expected = [[(math.floor((c + 0.5) * room / clips) + j * interval) for j in range(clip_len)] for c in range(clips)]
    got = dense_indices(n, clip_len=clip_len, frame_interval=interval, num_clips=clips)
    assert got.tolist() == expected


@pytest.mark.parametrize("short, expected", [
    ("loop", [0, 2, 4, 6, 8, 0, 2, 4]),  # 10, 12, 14 wrap to 0, 2, 4
    ("repeat_last", [0, 2, 4, 6, 8, 9, 9, 9]),
])
def test_short_video_policies(short, expected):
    """10 frames cannot hold 8 frames 2 apart (indices 0..14)."""
    assert dense_indices(10, clip_len=8, frame_interval=2, short=short)[0].tolist() == expected


def test_short_video_error_policy():
    with pytest.raises(ValueError, match="video has 10 frames but the sampler needs index 14"):
        dense_indices(10, clip_len=8, frame_interval=2, short="error")


def test_dense_train_mode_random_starts():
    starts = {int(dense_indices(200, clip_len=8, frame_interval=4, mode="train", seed=s)[0, 0]) for s in range(30)}
    assert len(starts) > 10 and max(starts) <= 200 - 29


def test_time_to_index_is_the_frame_on_screen():
    ts = np.array([0.0, 0.1, 0.2, 0.5, 0.6])
    assert time_to_index(ts, np.array([0.0, 0.05, 0.1, 0.3, 0.55, 9.0, -1.0])).tolist() == [0, 0, 1, 2, 3, 4, 0]


def test_uniform_time_on_constant_rate_equals_segments():
    ts = np.arange(300) / 30.0
    assert uniform_time_indices(ts, 8, duration=10.0).tolist() == segment_indices(300, 8).tolist()


def test_fps_sampling():
    ts = np.arange(250) / 25.0  # 10 s at 25 fps
    assert fps_indices(ts, 1.0, duration=10.0).tolist() == [25 * s for s in range(10)]
    assert fps_indices(ts, 2.0, duration=10.0).tolist() == [round(12.5 * s - 0.01) for s in range(20)]
    vfr = np.array([0.0, 0.5, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.9])
    assert fps_indices(vfr, 1.0, duration=3.0).tolist() == [0, 2, 7]


@pytest.mark.parametrize("duration, window, stride, starts", [
    (10.0, 4.0, 2.0, [0.0, 2.0, 4.0, 6.0]),
    (10.0, 4.0, 3.0, [0.0, 3.0, 6.0]),
    (11.0, 4.0, 3.0, [0.0, 3.0, 6.0, 7.0]),
    (3.0, 4.0, 2.0, [0.0]),
])
def test_sliding_windows_cover_the_video(duration, window, stride, starts):
    ts = np.arange(int(duration * 10)) / 10.0
    windows = sliding_windows(ts, window_s=window, stride_s=stride, frames_per_window=4, duration=duration)
    assert [w.start_s for w in windows] == pytest.approx(starts)
    assert windows[-1].end_s == pytest.approx(duration)
    for w in windows:
        assert w.end_s - w.start_s == pytest.approx(min(window, duration))
        mids = w.start_s + (np.arange(4) + 0.5) * (w.end_s - w.start_s) / 4
        assert w.indices.tolist() == [int(np.floor(m * 10 + 1e-9)) for m in mids]


@pytest.mark.parametrize("duration, window, stride, bounds", [
    (4.004, 4.0, 2.0, [(0.0, 4.004)]),  # was 0-4 and 0.004-4.004: one window twice
    (4.2, 4.0, 2.0, [(0.0, 4.2)]),  # at most 5 % longer than a window: one window over all of it
    (4.3, 4.0, 2.0, [(0.0, 4.0), (0.3, 4.3)]),
    (6.1, 4.0, 2.0, [(0.0, 4.0), (2.0, 6.0)]),  # 0.1 s left after the stride's windows: no window of its own
    (6.3, 4.0, 2.0, [(0.0, 4.0), (2.0, 6.0), (2.3, 6.3)]),
])
def test_a_sliver_of_a_tail_makes_no_window_of_its_own(duration, window, stride, bounds):
    got = window_bounds(duration, window, stride)
    assert np.allclose(got, bounds) and len(got) == len(bounds), got


def test_multi_view_is_evenly_spread_dense_clips():
    views = multi_view_indices(300, num_clips=4, clip_len=8, frame_interval=2)
    assert views.shape == (4, 8)
    assert views[:, 0].tolist() == [math.floor((c + 0.5) * 286 / 4) for c in range(4)]


def test_sampling_spec_validates_and_dispatches():
    ts = np.arange(100) / 25.0
    assert Sampling("segments", num_frames=4).indices(100, ts).tolist() == segment_indices(100, 4).tolist()
    assert Sampling("dense", clip_len=4, num_clips=2).indices(100, ts).shape == (2, 4)
    with pytest.raises(ValueError, match="sampling kind 'tsn': choose one of segments"):
        Sampling("tsn")
    with pytest.raises(ValueError, match=r"num_frames \(0\) must be > 0"):
        Sampling(num_frames=0)
    with pytest.raises(ValueError, match=r"num_segments \(0\) must be > 0"):
        segment_indices(10, 0)


def test_classify_and_benchmark_take_their_views_from_one_factory():
    """One TSN clip, or evenly spread dense clips of consecutive (or frame_interval apart) frames."""
    from configs.schema import BenchmarkConfig, DatasetConfig
    from pipeline.jobs.benchmark_features import sampling_for

    assert Sampling.views(8) == Sampling("segments", num_frames=8)
    assert Sampling.views(8, clips=3) == Sampling("dense", clip_len=8, num_clips=3)
    cfg = BenchmarkConfig("b", DatasetConfig("folders", "x"), clips=3, frame_interval=16)
    assert sampling_for(cfg, 8) == Sampling.views(8, 3, 16) == Sampling("dense", clip_len=8, num_clips=3,
                                                                        frame_interval=16)
