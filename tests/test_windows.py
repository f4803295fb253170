"""The tag job's streamed windows: chunked decoding equals decoding the whole video at once, cross-video batching
equals encoding each video alone, and a failing owner or video stays its own failure."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from videos import h264_bframes, mpeg4_avi_not_coded, pattern

from pipeline.features.clip_features import CrossVideoBatcher, encode_clip
from pipeline.features.window_decode import time_ranges
from pipeline.features.windows import (
    FrameGeometry,
    WindowChunk,
    WindowHeader,
    WindowTask,
    chunk_ranges,
    decode_windows,
    embed_windows,
)
from pipeline.model.loading import load_model
from pipeline.model.visual import pool_views
from pipeline.video.open import DecodeRequest, decode_request
from pipeline.video.samplers import Sampling

MODEL = load_model("random:tiny-vit", torch.device("cpu"))
S = MODEL.preprocess.image_size
GEOMETRY = FrameGeometry.of(MODEL.preprocess)


def test_chunk_ranges_cover_every_window_once_within_the_budget():
    rng = np.random.default_rng(0)
    starts = np.cumsum(rng.integers(0, 5, 40))
    indices = starts[:, None] + np.arange(0, 16, 2)[None]  # (40, 8) overlapping windows
    for budget in (1, 8, 9, 20, 1000):
        ranges = list(chunk_ranges(indices, budget))
        assert ranges[0][0] == 0 and ranges[-1][1] == 40
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # consecutive, no gap, no overlap
        for a, b in ranges:
            distinct = len(np.unique(indices[a:b]))
            assert distinct <= budget or b - a == 1  # a lone window may exceed a tiny budget
            if b < 40:  # greedy: the next window would not have fitted
                assert len(np.unique(indices[a : b + 1])) > budget


def _stream(task):
    """decode_windows run here rather than in a worker (it sets torch's thread count, restored afterwards)."""
    threads, gen, items = torch.get_num_threads(), decode_windows(task), []
    try:
        while True:
            items.append(next(gen))
    except StopIteration as stop:
        return items, stop.value
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("chunk_mb", [0.05, 64.0])
def test_chunks_rebuild_the_windows_of_a_whole_video_decode(tmp_path, chunk_mb):
    video = h264_bframes(tmp_path / "v.mp4", n=150, gop=25)  # 6 s at 25 fps
    task = WindowTask(str(video), GEOMETRY, num_frames=8, window_s=2.0, stride_s=1.0,
                      chunk_mb=chunk_mb)
    items, warnings = _stream(task)
    header, chunks = items[0], items[1:]
    assert isinstance(header, WindowHeader) and all(isinstance(c, WindowChunk) for c in chunks)
    assert warnings == ()
    assert header.bounds == ((0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0))
    assert (len(chunks) > 1) == (chunk_mb < 1)  # 0.05 MB holds ~1.4 frames of 96x128: one window per chunk
    # the reference: every window's frames decoded in one request, then the model's resize and crop
    ref = decode_request(DecodeRequest(str(video), Sampling("windows", num_frames=8, window_s=2.0, stride_s=1.0)))
    ref_frames = GEOMETRY.resize_crop(ref.frames).reshape(5, 8, S, S, 3)
    rebuilt = np.concatenate([c.frames[c.positions] for c in chunks])  # (W, T, S, S, 3)
    assert [c.first for c in chunks] == list(np.cumsum([0] + [len(c.positions) for c in chunks[:-1]]))
    assert np.array_equal(rebuilt, ref_frames)
    # each distinct frame crosses once: 2 s windows every 1 s with 8 frames each share half their frames
    assert sum(len(c.frames) for c in chunks) == (24 if len(chunks) == 1 else 40)


def test_cross_video_batcher_batches_across_owners_like_encoding_each_alone():
    rng = np.random.default_rng(1)
    owners = {k: torch.from_numpy(rng.integers(0, 256, (n, 3, S, S), dtype=np.uint8)) for k, n in
              enumerate([3, 7, 1, 12, 5])}
    encoder = CrossVideoBatcher(MODEL, batch_size=8)
    done = []
    for key, frames in owners.items():
        encoder.add(key, frames)
        done += encoder.ready()
        assert encoder.queued_frames < 8  # only full batches run until the flush
    done += encoder.ready(flush=True)
    assert [k for k, _, _ in done] == list(owners)  # in the order added
    for key, feats, error in done:
        alone = MODEL.model.encode_image(MODEL.transform.normalize(owners[key]))
        assert error is None and torch.allclose(feats, alone, atol=1e-5)


class LateEncoder:
    """An encoder that holds up to three batches and finishes each only on its third poll (or when waited on), as
    Ray actors do: the batcher must hand back the rows the local encoder gives, and owners in the order added."""

    capacity = 3

    def __init__(self):
        self.polls, self.most_under_way, self.under_way = {}, 0, 0

    def submit(self, pieces):
        from pipeline.features.encoders import encode_batch

        handle = len(self.polls)
        self.polls[handle] = [0, encode_batch(MODEL, pieces)]
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        return handle

    def result(self, handle, wait):
        self.polls[handle][0] += 1
        if not wait and self.polls[handle][0] < 3:
            return None
        self.under_way -= 1
        return self.polls[handle][1]

    def close(self):
        pass


def test_an_encoder_holding_several_batches_gives_what_the_local_one_gives():
    rng = np.random.default_rng(2)
    owners = [(k, torch.from_numpy(rng.integers(0, 256, (n, 3, S, S), dtype=np.uint8)))
              for k, n in enumerate([3, 7, 1, 12, 5, 9, 2, 16])]
    owners.insert(3, ("bad", torch.zeros(2, 3, 2 * S, 2 * S, dtype=torch.uint8)))  # its batch is rerun alone

    def run(encoder):
        batcher, done = CrossVideoBatcher(MODEL, batch_size=4, encoder=encoder), []
        for key, frames in owners:
            batcher.add(key, frames)
            done += batcher.ready()
        return done + batcher.ready(flush=True)

    late = LateEncoder()
    local, held = run(None), run(late)
    assert late.most_under_way == 3 and late.under_way == 0  # it did hold batches, and gave every one back
    assert [k for k, _, _ in held] == [k for k, _, _ in local] == [k for k, _ in owners]
    for (_, a, fa), (_, b, fb) in zip(local, held):
        assert (fa, a is None) == (fb, b is None)
        assert a is None or torch.equal(a, b)
    assert next(f for k, _, f in held if k == "bad").stage == "model"


def test_an_owner_dropped_while_its_frames_are_being_encoded_is_not_returned_and_costs_the_others_nothing():
    rng = np.random.default_rng(3)
    owners = [(k, torch.from_numpy(rng.integers(0, 256, (n, 3, S, S), dtype=np.uint8))) for k, n in
              enumerate([6, 12, 5])]
    late = LateEncoder()
    batcher = CrossVideoBatcher(MODEL, batch_size=8, encoder=late)
    for key, frames in owners:
        batcher.add(key, frames)
    assert batcher.ready() == [] and late.under_way == 2  # owner 0's 6 and 1's first 10 frames out, none back
    batcher.drop(lambda key: key != 1)  # owner 1: 10 frames being encoded, 2 not yet sent
    assert batcher.queued_frames == 5  # owner 2's: owner 1's unsent 2 are forgotten
    done = batcher.ready(flush=True)
    assert [k for k, _, _ in done] == [0, 2] and late.under_way == 0 and batcher.queued_frames == 0
    for key, feats, failure in done:
        alone = MODEL.model.encode_image(MODEL.transform.normalize(dict(owners)[key]))
        assert failure is None and torch.allclose(feats, alone, atol=1e-5)


def test_a_failing_owner_is_its_own_failure():
    good = torch.zeros(5, 3, S, S, dtype=torch.uint8)
    bad = torch.zeros(2, 3, 2 * S, 2 * S, dtype=torch.uint8)  # wrong size: the model cannot take it
    encoder = CrossVideoBatcher(MODEL, batch_size=16)
    encoder.add("a", good)
    encoder.add("bad", bad)
    encoder.add("b", good)
    out = {k: (f, e) for k, f, e in encoder.ready(flush=True)}
    assert out["a"][1] is None and out["b"][1] is None and out["a"][0].shape == (5, MODEL.embed_dim)
    failure = out["bad"][1]
    assert out["bad"][0] is None and (failure.status, failure.stage) == ("error", "model")
    assert failure.reason.startswith("RuntimeError: ")


@pytest.mark.slow
def test_embed_windows_equals_encoding_each_video_whole(tmp_path):
    from pipeline.video.pyav_reader import PyAVReader  # noqa: F401 (the reference decodes with the same backend)

    paths = [h264_bframes(tmp_path / f"v{i}.mp4", n=50 + 40 * i, gop=12) for i in range(3)]
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    tasks = [WindowTask(str(p), GEOMETRY, num_frames=4, window_s=1.0, stride_s=0.5, chunk_mb=0.2,
                        resize=448) for p in paths + [tmp_path / "broken.mp4"]]
    out = {t.path: (v, e) for t, v, e in embed_windows(tasks, MODEL, batch_size=5, decode_workers=2,
                                                      timeout_s=60)}
    assert set(out) == {t.path for t in tasks}
    video, error = out[str(tmp_path / "broken.mp4")]
    assert video is None and (error.status, error.stage) == ("error", "open") and error.reason
    for p in paths:
        video, error = out[str(p)]
        assert error is None
        ref = decode_request(DecodeRequest(str(p), Sampling("windows", num_frames=4, window_s=1.0, stride_s=0.5),
                                           resize=448))
        assert video.windows.vectors.shape == (ref.indices.shape[0], MODEL.embed_dim)
        assert video.windows.tokens is None
        assert torch.allclose(video.windows.vectors, _pooled(ref), atol=1e-5)
        # against the model's own tensor transform (torch's resize): the same up to Pillow's rounding
        cos = (video.windows.vectors * pool_views(encode_clip(MODEL, ref, batch_size=64), "mean")).sum(-1)
        assert cos.min() > 0.999
        assert len(video.bounds) == ref.indices.shape[0] and video.info.num_frames == 50 + 40 * paths.index(p)


def test_pattern_frames_are_distinct():  # the premise of the frame-equality checks above
    assert not np.array_equal(pattern(0), pattern(1))


@pytest.mark.slow
def test_a_crashed_attempt_leaves_nothing_in_its_retry(tmp_path):
    from worker_fns import windows_then_segfault

    path = h264_bframes(tmp_path / "v.mp4", n=100, gop=12)
    task = WindowTask(str(path), GEOMETRY, num_frames=4, window_s=1.0, stride_s=0.5, chunk_mb=0.2)
    [(done, video, error)] = list(embed_windows([task], MODEL, batch_size=5, decode_workers=1,
                                                timeout_s=60, fn=windows_then_segfault))
    assert error is None and done.backend == "decord" and video.info.backend == "decord"
    ref = decode_request(DecodeRequest(str(path), Sampling("windows", num_frames=4, window_s=1.0, stride_s=0.5)))
    assert torch.allclose(video.windows.vectors, _pooled(ref), atol=1e-5)


def test_time_ranges_cut_equal_runs_of_at_least_the_minimum():
    for windows, duration, split, minimum in [(1799, 3600.0, 2, 60.0), (1799, 3600.0, 16, 60.0), (59, 119.9, 4, 60.0),
                                              (60, 120.0, 4, 60.0), (61, 122.0, 16, 60.0), (5, 6.0, 8, 1.0),
                                              (3, 6.0, 8, 1.0), (1, 4.0, 8, 1.0)]:
        ranges = time_ranges(windows, duration, split, minimum)
        assert len(ranges) == max(1, min(split, int(duration // minimum), windows)), (windows, duration, split)
        assert ranges[0][0] == 0 and ranges[-1][1] == windows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_only_a_seekable_long_video_is_split(tmp_path):
    """An MPEG-4 AVI with a "not coded" packet is read from the start on every request (see pyav_reader): cutting
    it would make every range decode all that comes before it. An H.264 MP4 of the same length is cut."""
    avi = mpeg4_avi_not_coded(tmp_path / "v.avi", n=100)
    mp4 = h264_bframes(tmp_path / "v.mp4", n=100, gop=12)
    for path, parts in [(avi, 1), (mp4, 3)]:
        header = next(decode_windows(_long_task(path)))
        assert header.info.duration >= 3.0 and len(header.ranges) == parts, path  # three 1 s ranges if it seeks
        assert header.ranges[0][0] == 0 and header.ranges[-1][1] == len(header.bounds)
    assert next(decode_windows(_long_task(mp4, backend="decord"))).ranges == ((0, 7),)  # a crash's retry: never cut


def _long_task(path, **kw):
    """A 'long' video at test scale: ranges of a second or more, so a 6 s video splits into three."""
    return WindowTask(str(path), GEOMETRY, **{"num_frames": 4, "window_s": 1.0, "stride_s": 0.5, "chunk_mb": 0.2,
                                              "split": 3, "min_range_s": 1.0} | kw)


def _embed_long(path, fn=decode_windows, **kw):
    """(task, video, error) of the one video ``path``, split into its three ranges, through two workers."""
    [out] = list(embed_windows([_long_task(path, **kw)], MODEL, batch_size=5, decode_workers=2, timeout_s=60, fn=fn))
    return out


def _long_reference(path) -> torch.Tensor:
    """(W, E): the windows of _long_task, decoded in one request and pooled."""
    return _pooled(decode_request(DecodeRequest(str(path), Sampling("windows", num_frames=4, window_s=1.0,
                                                                    stride_s=0.5))))


@pytest.mark.slow
def test_a_split_video_decodes_its_ranges_apart_and_reassembles_them_in_order(tmp_path):
    from worker_fns import windows_logged

    path = h264_bframes(tmp_path / "v.mp4", n=150, gop=12)  # 6 s: 11 windows, three ranges
    done, video, error = _embed_long(path, windows_logged)
    assert error is None and done.window_range is None
    tasks = sorted(line.split(" ", 1)[1] for line in (tmp_path / "v.mp4.tasks").read_text().splitlines())
    assert tasks == ["(4, 7) auto", "(7, 11) auto", "None auto"]  # the whole video's task decoded (0, 4)
    assert torch.allclose(video.windows.vectors, _long_reference(path), atol=1e-5)  # every window once, in order
    assert len(video.bounds) == 11 and video.warnings == ()
    _, whole, _ = _embed_long(path, split=1)
    assert whole.bounds == video.bounds and whole.poster == video.poster  # the poster came from range (4, 7)
    assert torch.allclose(whole.windows.vectors, video.windows.vectors, atol=1e-5)


def test_a_video_fails_once_when_one_of_its_ranges_fails(tmp_path):
    from worker_fns import windows_range_fails

    long = h264_bframes(tmp_path / "long.mp4", n=150, gop=12)
    short = h264_bframes(tmp_path / "short.mp4", n=40, gop=12)  # 1.6 s: one range
    out = list(embed_windows([_long_task(long), _long_task(short)], MODEL, batch_size=5, decode_workers=2,
                             timeout_s=60, fn=windows_range_fails))
    assert sorted(t.path for t, _, _ in out) == [str(long), str(short)]  # one outcome per video, none twice
    by_path = {t.path: (v, e) for t, v, e in out}
    failure = by_path[str(long)][1]
    assert by_path[str(long)][0] is None and (failure.status, failure.stage) == ("error", "decode")
    assert failure.reason.startswith("frames of windows (")
    assert by_path[str(short)][1] is None and len(by_path[str(short)][0].bounds) == 3
    assert not (tmp_path / "long.mp4.woke").exists()  # the failed video's first worker was stopped, not waited for


def test_a_path_given_twice_is_refused(tmp_path):
    path = h264_bframes(tmp_path / "v.mp4", n=25, gop=12)
    with pytest.raises(ValueError, match="each path once"):
        next(embed_windows([_long_task(path), _long_task(path, chunk_mb=1.0)], MODEL))


@pytest.mark.slow
def test_a_crashed_range_is_redone_alone_on_decord(tmp_path):
    from worker_fns import windows_range_segfaults

    path = h264_bframes(tmp_path / "v.mp4", n=150, gop=12)
    done, video, error = _embed_long(path, windows_range_segfaults)
    assert error is None and done.backend == "auto" and video.info.backend == "pyav"
    assert torch.allclose(video.windows.vectors, _long_reference(path), atol=1e-5)  # the zeroed frames were replaced
    assert sorted(video.warnings) == ["windows 4-7 decoded with decord (the pyav worker on them crashed)",
                                      "windows 7-11 decoded with decord (the pyav worker on them crashed)"]


@pytest.mark.slow
def test_a_crashed_split_video_is_redone_whole_on_decord(tmp_path):
    from worker_fns import windows_then_segfault

    path = h264_bframes(tmp_path / "v.mp4", n=150, gop=12)
    done, video, error = _embed_long(path, windows_then_segfault)
    assert error is None and done.backend == "decord" and video.info.backend == "decord"
    assert torch.allclose(video.windows.vectors, _long_reference(path), atol=1e-5)  # the crashed attempt left nothing


def _pooled(clip) -> torch.Tensor:
    """(W, E): a whole decode's windows through the worker's resize (Pillow), then the model, mean-pooled."""
    frames = torch.from_numpy(GEOMETRY.resize_crop(clip.frames)).permute(0, 3, 1, 2)  # (W·T, 3, S, S)
    feats = MODEL.encode(MODEL.transform.normalize(frames)).view(*clip.indices.shape, -1)  # (W, T, E)
    return pool_views(feats, "mean")


def test_the_workers_resize_is_the_models_within_one_level(sample_videos):
    """Pillow in the workers against ClipTransform's antialiased torch resize, on real footage at a CLIP size and
    both interpolations: at most one level apart, on under 1 % of pixels (measured: 0.23 % bicubic, 0.10 %
    bilinear on 720p)."""
    import clip_model
    from pipeline.video.open import open_video

    with open_video(sample_videos[0], "pyav") as reader:
        frames = reader.read_frames(np.arange(0, reader.num_frames, max(1, reader.num_frames // 6)))
    for interpolation in ("bicubic", "bilinear"):
        config = clip_model.PreprocessConfig(224, interpolation=interpolation)
        ours = FrameGeometry.of(config).resize_crop(frames).astype(int)
        model = clip_model.ClipTransform(config).resize_crop(torch.from_numpy(frames)).permute(0, 2, 3, 1).numpy()
        diff = np.abs(ours - model.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (interpolation, diff.max(), (diff > 0).mean())
