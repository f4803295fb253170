"""Frame accuracy of both backends against sequential PyAV decoding, rotation, VFR, sparse access, resize, leaks."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from videos import (
    encode,
    gop_variety,
    h264_bframes,
    mpeg4_avi_bframes,
    mpeg4_avi_not_coded,
    reference_frames,
    rotated,
    vfr,
)

from pipeline.video.open import open_video
from pipeline.video.reader import VideoDecodeError
from pipeline.video.samplers import segment_indices, uniform_time_indices
from pipeline.video.supervisor import rss_mb

MAKERS = {"h264_bframes.mp4": h264_bframes, "mpeg4_bframes.avi": mpeg4_avi_bframes, "vfr.mp4": vfr,
          "mpeg4_not_coded.avi": mpeg4_avi_not_coded}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("made")
    return {name: fn(d / name) for name, fn in MAKERS.items()}


def _check_exact(path, backend, n_indices=40, seed=0):
    ref = reference_frames(path)
    reader = open_video(path, backend)
    assert reader.info.num_frames == len(ref)
    idx = np.random.default_rng(seed).integers(0, len(ref), n_indices)
    frames = reader.get_frames(idx).numpy()
    wrong = [int(i) for k, i in enumerate(idx) if not np.array_equal(frames[k], ref[i])]
    return reader, wrong


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_exact_frames_on_hazardous_files(made, name, backend):
    reader, wrong = _check_exact(made[name], backend)
    assert wrong == [], f"{reader.info.backend} returned wrong frames at {wrong}"


@pytest.mark.slow
def test_exact_frames_on_real_sample_videos(sample_videos):
    for path in sample_videos:
        for backend in ("pyav", "decord", "auto"):
            reader, wrong = _check_exact(path, backend, n_indices=16)
            assert wrong == [], (path.name, backend)


def test_avi_seeks_on_its_packet_index_unless_a_packet_may_decode_to_no_frame(made, monkeypatch):
    """An MPEG-4 AVI with B-frames is read by keyframe seeks (its demuxed pts are presentation times); one with
    "not coded" VOPs (packets FFmpeg decodes to no frame) is read sequentially, and must be: numbered by its packets
    it would be wrong from the first such packet on."""
    import pipeline.video.pyav_reader as pyav_reader

    with open_video(made["mpeg4_bframes.avi"], "pyav") as reader:
        assert reader._indexed and reader.reorders
    path = made["mpeg4_not_coded.avi"]
    ref = reference_frames(path)
    with open_video(path, "pyav") as reader:
        assert not reader._indexed and reader.num_frames == len(ref) == 40
    monkeypatch.setattr(pyav_reader, "AVI_NOT_CODED_BYTES", 0)  # without the check
    with open_video(path, "pyav") as reader:
        assert reader._indexed and reader.num_frames == 42  # 42 packets, 40 frames
        frames = reader.get_frames(np.arange(40)).numpy()
    assert not all(np.array_equal(a, b) for a, b in zip(frames, ref))


def test_a_packed_bframe_avi_seeks_exactly_through_the_unpacking_filter(tmp_path):
    """DivX-style packed B-frames (a reference and a B-frame in one chunk, a placeholder in the B-frame's slot, the
    DivX 'p' user data), with open GOPs (an I-frame packed with the B-frame before it): read by keyframe seeks, every
    frame and any subset equal sequential decoding, and a few frames decode a fraction of the file."""
    from videos import pattern

    from datasets.synthetic import write_packed_avi

    path = write_packed_avi(tmp_path / "packed.avi", np.stack([pattern(i) for i in range(90)]), gop=12)
    ref = reference_frames(path)
    assert len(ref) == 90
    with open_video(path, "pyav") as reader:
        assert reader.seeks and reader.num_frames == 90 and reader._packed is not None
        assert np.array_equal(reader.read_frames(np.arange(90)), np.stack(ref))
        np.testing.assert_allclose(reader.timestamps, np.arange(90) / 25)
    rng = np.random.default_rng(0)
    for _ in range(10):
        with open_video(path, "pyav") as reader:
            idx = np.sort(rng.choice(90, 4, replace=False))
            assert np.array_equal(reader.read_frames(idx), np.stack([ref[i] for i in idx])), idx
            assert not reader.warnings
    with open_video(path, "pyav") as reader:
        reader.read_frames(segment_indices(90, 4))
        assert reader.frames_decoded < 45  # seeks: not the 90 frames a sequential pass decodes


def test_decord_is_wrong_on_mpeg4_avi_and_says_so_while_auto_is_exact(made):
    """decord mis-seeks on MPEG-4 Part 2 AVIs with B-frames (decord#195): detected from PyAV's index and warned
    about when decord is asked for; auto decodes with PyAV and is exact."""
    path = made["mpeg4_bframes.avi"]
    reader, decord_wrong = _check_exact(path, "decord")
    assert len(decord_wrong) > 10  # the hazard is real on this file ...
    assert any("decord may return wrong frames for this file (avi/mpeg4" in w for w in reader.warnings)
    reader, wrong = _check_exact(path, "auto")
    assert reader.info.backend == "pyav" and wrong == []  # ... and auto avoids it
    reader, _ = _check_exact(made["h264_bframes.mp4"], "decord")
    assert reader.warnings == []  # where decord agrees with the index it is not warned about


def test_auto_falls_back_to_decord_only_when_pyav_cannot_open(made, monkeypatch):
    from pipeline.video.pyav_reader import PyAVReader
    from pipeline.video.reader import VideoOpenError

    def refuse(self):
        raise VideoOpenError(self.path, "cannot open: simulated")

    monkeypatch.setattr(PyAVReader, "_open", refuse)
    with pytest.raises(VideoOpenError, match="simulated"):
        open_video(made["h264_bframes.mp4"], "pyav")
    reader = open_video(made["h264_bframes.mp4"], "auto")
    assert reader.info.backend == "decord"
    assert reader.warnings == ["auto: PyAV could not open the file (cannot open: simulated); decoded with decord"]
    ref = reference_frames(made["h264_bframes.mp4"])
    assert np.array_equal(reader.get_frames([17]).numpy()[0], ref[17])


@pytest.mark.slow
def test_parallel_runs_give_the_same_frames(long_video):
    ref = reference_frames(long_video)
    idx = segment_indices(1500, 16)
    for threads in (2, 3):
        reader = open_video(long_video, "pyav", threads=threads)
        frames = reader.get_frames(idx[::-1]).numpy()  # any order
        assert all(np.array_equal(frames[k], ref[i]) for k, i in enumerate(idx[::-1]))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied_identically_by_both_backends(tmp_path, rotation):
    path = rotated(tmp_path / f"rot{rotation}.mp4", rotation=rotation)
    ref = reference_frames(path)  # coded orientation
    expected = np.stack([np.rot90(ref[i], rotation // 90) for i in (0, 5, 11)])
    for backend in ("pyav", "decord", "auto"):
        reader = open_video(path, backend)
        got = reader.get_frames([0, 5, 11]).numpy()
        assert np.array_equal(got, expected), backend
        assert (reader.info.height, reader.info.width) == got.shape[1:3]
        assert reader.info.rotation == rotation


def test_vfr_timestamps_and_time_uniform_sampling(made):
    path = made["vfr.mp4"]  # 20 frames at 10 fps then 20 at 40 fps: 2.0 s + 0.5 s
    for backend in ("pyav", "auto"):
        reader = open_video(path, backend)
        expected = np.concatenate([np.arange(20) * 0.1, 2.0 + np.arange(20) * 0.025])
        assert np.allclose(reader.timestamps, expected, atol=1e-3)
        assert abs(reader.info.duration - 2.5) < 0.03
        idx = uniform_time_indices(reader.timestamps, 5, duration=reader.info.duration)
        times = reader.timestamps[idx]
        assert np.allclose(times, [0.2, 0.7, 1.2, 1.7, 2.2], atol=0.101)  # on screen at the segment middles
        # index-uniform sampling is not time-uniform here: 3 of 5 samples fall in the last 0.5 s of 2.5 s
        assert (reader.timestamps[segment_indices(40, 5)] >= 2.0).sum() == 3


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """60 s at 25 fps, GOP 250 with B-frames."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return encode(path, 1500, options={"g": "250", "bf": "3", "x264-params": "scenecut=0"}, size=(48, 64))


def test_sparse_access_decodes_a_fraction_of_a_long_video(long_video):
    reader = open_video(long_video, "pyav")
    idx = segment_indices(reader.info.num_frames, 8)
    frames = reader.get_frames(idx).numpy()
    assert frames.shape == (8, 48, 64, 3)
    assert reader.frames_decoded < 1500 / 2  # seeks near each target; never the whole file
    ref = reference_frames(long_video)
    assert all(np.array_equal(frames[k], ref[i]) for k, i in enumerate(idx))


@pytest.mark.slow
def test_early_resize_in_the_decoder(long_video, sample_videos):
    big = next(p for p in sample_videos if p.name == "bigbuckbunny.mp4")  # 1280x720
    for backend in ("pyav", "decord", "auto"):
        reader = open_video(big, backend, resize=224)
        frames = reader.get_frames([0, 50, 100])
        assert tuple(frames.shape) == (3, 224, 398, 3) and (reader.info.height, reader.info.width) == (224, 398)
        # frame 50 scaled down in the decoder is frame 50 decoded whole and box-filtered to the same size (PIL): mean
        # absolute difference 1.7 (pyav) and 2.1 (decord) here, against 4.0 for the neighbouring frame 51, 76 flipped
        native = open_video(big, "pyav").get_frames([50])[0].numpy()
        ref = np.asarray(Image.fromarray(native).resize((398, 224), Image.BOX)).astype(np.float32)
        assert np.abs(frames[1].numpy().astype(np.float32) - ref).mean() < 3.0, backend


def test_frames_in_requested_order_with_repeats(made):
    path = made["h264_bframes.mp4"]
    ref = reference_frames(path)
    for backend in ("pyav", "decord"):
        got = open_video(path, backend).get_frames([30, 2, 30, 59, 0]).numpy()
        assert all(np.array_equal(got[k], ref[i]) for k, i in enumerate([30, 2, 30, 59, 0]))


def test_out_of_range_indices_are_an_error(made):
    reader = open_video(made["h264_bframes.mp4"], "pyav")
    with pytest.raises(VideoDecodeError, match=r"h264_bframes\.mp4: frame indices must lie in \[0, 60\)"):
        reader.get_frames([0, 60])


def test_one_reader_shared_across_threads(made):
    path = made["h264_bframes.mp4"]
    ref = reference_frames(path)
    for backend in ("pyav", "decord"):
        reader, errors = open_video(path, backend), []

        def work(seed: int, reader=reader, errors=errors) -> None:
            idx = np.random.default_rng(seed).integers(0, 60, 10)
            got = reader.get_frames(idx).numpy()
            if not all(np.array_equal(got[k], ref[i]) for k, i in enumerate(idx)):
                errors.append(seed)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], backend


@pytest.mark.slow
def test_no_leak_over_500_decodes(made):
    path = made["h264_bframes.mp4"]
    for backend in ("pyav", "decord"):
        for _ in range(20):  # warm up allocator pools
            with open_video(path, backend) as r:
                r.get_frames([3, 40])
        before = rss_mb()
        for k in range(500):
            with open_video(path, backend) as r:
                r.get_frames([k % 60, (k * 7) % 60])
        growth = rss_mb() - before
        print(f"{backend}: RSS growth over 500 decodes {growth:.1f} MiB")
        assert growth < 100, backend


@pytest.mark.slow
def test_separate_readers_in_parallel_threads_do_not_deadlock(long_video):
    """Frame-threaded decoders opened, used and freed in several threads at once. (A deadlock between PyAV's global
    log callback and a decoder freed in another thread was seen once in bench_decode.py; it is timing-dependent and
    this test does not reproduce it on demand, but it guards the path.) A child process turns a hang into a failure."""
    code = f"""
import numpy as np
from concurrent.futures import ThreadPoolExecutor
from pipeline.video.open import open_video
def work(k):
    for j in range(6):
        with open_video({str(long_video)!r}, "pyav") as r:
            r.get_frames(np.sort(np.random.default_rng(k * 10 + j).integers(0, 1500, 4)))
    return k
with ThreadPoolExecutor(4) as ex:
    print(sorted(ex.map(work, range(8))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == str(list(range(8))), out.stderr[-500:]


def test_info_is_available_after_close(made):
    path = made["h264_bframes.mp4"]
    with open_video(path, "pyav") as reader:  # never read: the rotation is settled on close
        pass
    assert (reader.info.height, reader.info.width, reader.info.num_frames, reader.info.stream) == (96, 128, 60, 0)
    with open_video(made["mpeg4_bframes.avi"], "pyav") as reader:  # the sequential path reopens the container
        pass
    assert reader.info.codec == "mpeg4" and reader.info.num_frames == 60 and reader.info.stream == 0


def test_decord_on_a_bframe_avi_takes_pyavs_frame_times(made):
    """decord reports garbage timestamps (about -3.8e17 s) for the first frames of an MPEG-4 AVI with B-frames;
    the reader replaces them with PyAV's for the same stream and says so, so window sampling stays sane."""
    path = made["mpeg4_bframes.avi"]
    with open_video(path, "pyav") as pyav:
        times, duration = pyav.timestamps, pyav.duration
    with open_video(path, "decord") as reader:
        assert np.allclose(reader.timestamps, times) and reader.duration == pytest.approx(duration)
        assert any("no usable timestamps" in w for w in reader.warnings)


def test_skipping_unwanted_non_reference_frames_is_exact_and_skips_only_where_there_are_some(tmp_path):
    """The exact skip (issue 27, item 1): frames read with skip_frame=NONREF on the packets of unwanted frames are
    a full decode's, on a B-pyramid (whose reference B-frames must still be decoded), an open GOP, no B-frames (nothing
    to skip), HEVC and an MPEG-4 AVI; and the decoder does less wherever there are B-frames."""
    from pipeline.video.pyav_reader import PyAVReader
    from pipeline.video.samplers import sliding_windows

    for video in gop_variety(tmp_path):
        full = reference_frames(video)
        with PyAVReader(video) as probe:  # tag's sampling: the distinct frames of sliding windows
            windows = sliding_windows(probe.timestamps, window_s=1.0, stride_s=0.5, frames_per_window=4,
                                      duration=probe.duration)
        wanted = np.unique(np.stack([w.indices for w in windows]))
        decoded = {}
        for skip in (True, False):
            with PyAVReader(video) as reader:
                reader.skip_nonref = skip
                got = reader.read_frames(wanted)
                decoded[skip] = reader.frames_decoded
            wrong = [int(i) for k, i in enumerate(wanted) if not np.array_equal(got[k], full[int(i)])]
            assert wrong == [], (video.name, skip, wrong)
        if video.name == "no_b.mp4":
            assert decoded[True] == decoded[False], decoded  # every frame is a reference: nothing skipped
        else:
            assert decoded[True] < decoded[False], (video.name, decoded)
