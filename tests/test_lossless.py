"""Frame i is frame i: videos whose every frame is known pixel for pixel, read back through both backends
(``open_video``'s readers, ``decode_request`` with the samplers) and compared exactly with the frame expected at each
index asked for. Lossy fixtures (datasets.synthetic.write_video: H.264 in yuv420p) can only say "about right"; an
off-by-one frame, a wrong seek or a colour conversion shows here as inequality.

Two lossless encodings, checked lossless by decoding them straight with PyAV first: FFV1 in Matroska (``bgr0``: RGB
without chroma subsampling) and libx264rgb at qp 0 in MP4 (RGB H.264). Both have a keyframe every 25 frames, so frames
past the first group are reached by seeking. x264 turns B-frames off at qp 0 (``bf`` 2 and ``bframes=3:b-adapt=0``
alike: every packet's pts equals its dts), and no other lossless encoder here reorders, so a third file, libx264rgb at
qp 10 with 2 B-frames, covers decode order != presentation order: lossy, so its expected frame i is what PyAV's plain
sequential decode yields (open.py's definition of frame i; H.264 decoding is bit-exact and planar GBR -> RGB is a
shuffle, so decord's FFmpeg must give the same bytes), each checked to show the number i drawn into it. decord reads
all three (its bundled FFmpeg 4.1 has the FFV1 decoder and the Matroska demuxer), so both backends run on each."""
from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.video.open import DecodeRequest, decode_request, open_video
from pipeline.video.samplers import Sampling, segment_indices

T, H, W, FPS, GOP = 100, 48, 64, 25, 25
BITS = 8  # frame i's number in binary, one 8 x 8 block a bit, across the top: up to 256 frames
X264_GOP = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}  # a keyframe every GOP frames, no others
ENCODINGS = {  # file name -> (encoder, pixel format, options, lossless)
    "ffv1.mkv": ("ffv1", "bgr0", {"g": str(GOP)}, True),
    "x264rgb.mp4": ("libx264rgb", "rgb24", {"qp": "0"} | X264_GOP, True),
    "x264rgb-bframes.mp4": ("libx264rgb", "rgb24", {"qp": "10", "bf": "2"} | X264_GOP, False),
}
BACKENDS = ("pyav", "decord")
INDEX_SETS = {
    "sorted": [0, 1, 2, 24, 25, 26, 49, 50, 99],
    "unsorted": [77, 3, 51, 26, 0, 98, 12],
    "repeats": [10, 10, 60, 10, 99, 99, 0, 0],
    "first and last": [0, T - 1],
    "far seek": [93],  # in the last group: three keyframes in
    "inside groups": [37, 38, 62, 88],  # none a keyframe
    "backwards": list(range(T - 1, -1, -7)),
    "every frame": list(range(T)),
}


def draw(i: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB frame i: a fixed full-range noise background; i in binary across the top (bit b is block
    b, red-orange for 1, dark blue for 0); a strip of a colour of i's own; a square moving 3 px a frame; a patch of
    fresh noise (seeded by i) so that every frame carries new detail."""
    frame = np.random.default_rng(12345).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for b in range(BITS):
        frame[0:8, 8 * b : 8 * b + 8] = (250, 90, 10) if (i >> b) & 1 else (5, 20, 120)
    frame[8:12] = (i % 256, (7 * i) % 256, 255 - i % 256)
    x = (3 * i) % (W - 6)
    frame[16:22, x : x + 6] = (20, 240, 60)
    frame[32:48, 0:24] = np.random.default_rng(i).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    return frame


def frame_number(frame: np.ndarray) -> int:
    """The number drawn into a frame (for messages: which frame came back)."""
    return sum(1 << b for b in range(BITS) if frame[4, 8 * b + 4, 0] > 127)


def encode(path, frames: np.ndarray, codec: str, pix_fmt: str, options: dict[str, str]) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    frames = np.stack([draw(i) for i in range(T)])
    assert [frame_number(f) for f in frames] == list(range(T))  # every frame differs from every other
    return frames


@pytest.fixture(scope="module", params=list(ENCODINGS))
def video(request, drawn, tmp_path_factory):
    """(path, name, expected frames) of an encoding of ``drawn``, checked: PyAV's own sequential decode gives back
    exactly the drawn RGB (lossless), or frames that each show their own number (lossy); keyframes every GOP frames;
    B-frames in the B-frame file only."""
    name = request.param
    codec, pix_fmt, options, lossless = ENCODINGS[name]
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build of PyAV has no {codec} encoder")
    path = tmp_path_factory.mktemp("lossless") / name
    encode(path, drawn, codec, pix_fmt, options)
    with av.open(str(path)) as container:
        packets = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
    assert decoded.shape == drawn.shape
    if lossless:
        assert np.array_equal(decoded, drawn), f"{name} is not lossless"
    else:
        assert [frame_number(f) for f in decoded] == list(range(T)), f"{name}: sequential decoding is out of order"
        assert 0 < np.abs(decoded.astype(int) - drawn).mean() < 8  # lossy, and not by much
    assert [i for i, (_, _, key) in enumerate(packets) if key] == list(range(0, T, GOP))
    assert any(pts != dts for pts, dts, _ in packets) == ("bframes" in name)
    return path, name, decoded


def _assert_frames(frames: np.ndarray, indices, expected: np.ndarray, what: str) -> None:
    indices = np.asarray(indices).reshape(-1)
    assert frames.shape == (len(indices), H, W, 3) and frames.dtype == np.uint8, what
    for k, i in enumerate(indices):
        assert np.array_equal(frames[k], expected[i]), (
            f"{what}: position {k} asked for frame {i}, got a frame showing {frame_number(frames[k])}"
            f" ({int((frames[k] != expected[i]).any(-1).sum())} pixels differ)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_index_set_reads_exactly_the_expected_frames(video, backend):
    path, name, expected = video
    with open_video(path, backend=backend) as reader:
        assert (reader.num_frames, reader.info.height, reader.info.width) == (T, H, W)
        np.testing.assert_allclose(reader.timestamps, np.arange(T) / FPS, atol=1e-6)
        for label, indices in INDEX_SETS.items():
            _assert_frames(reader.read_frames(indices), indices, expected, f"{backend} on {name}, {label}")
        for indices in ([90], [5], [60], [59], [99], [0]):  # one reader, seeking back and forth between calls
            _assert_frames(reader.read_frames(indices), indices, expected, f"{backend} on {name}, call for {indices}")
        assert np.array_equal(reader.get_frames([3, 50]).numpy(), expected[[3, 50]])
        assert reader.warnings == []


def test_pyav_reaches_far_frames_by_seeking_and_in_parallel(video):
    """The far frame costs about one group of decoding, not the whole file; two threads give the same frames."""
    path, name, expected = video
    with open_video(path, backend="pyav") as reader:
        assert reader.seeks
        _assert_frames(reader.read_frames([93]), [93], expected, f"pyav on {name}, far seek")
        assert reader.frames_decoded <= 93 - 75 + 1  # from keyframe 75 (B-frames not wanted are skipped)
    with open_video(path, backend="pyav", threads=2) as reader:
        for label in ("unsorted", "every frame", "backwards"):
            _assert_frames(reader.read_frames(INDEX_SETS[label]), INDEX_SETS[label], expected,
                           f"pyav threads=2 on {name}, {label}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_clips_are_the_expected_frames_at_the_sampled_indices(video, backend):
    path, name, expected = video
    middle = np.floor((np.arange(8) + 0.5) * T / 8).astype(np.int64)  # the segments' middles, by hand
    assert segment_indices(T, 8).tolist() == middle.tolist()
    for sampling, indices in [(Sampling("segments", num_frames=8), middle),
                              (Sampling("uniform_time", num_frames=8), middle),  # constant rate: the same frames
                              (Sampling("dense", clip_len=4, frame_interval=3, num_clips=2),  # starts
                               [[22, 25, 28, 31], [68, 71, 74, 77]]),  # floor((k + 0.5) * 91 / 2), 91 = 100 - 10 + 1
                              (Sampling("fps", fps=1.0), np.arange(0, T, FPS)),
                              (Sampling("all"), np.arange(T))]:
        clip = decode_request(DecodeRequest(str(path), sampling, backend=backend))
        assert clip.indices.tolist() == np.asarray(indices).tolist(), sampling
        _assert_frames(clip.frames, clip.indices, expected, f"{backend} on {name}, {sampling.kind} sampling")
        assert clip.warnings == ()


# samplers.time_to_index once compared sample times with float timestamps exactly: at 25 fps on these 25 fps
# files 10 (pyav) or 46 (decord) of the 100 frames were their predecessor (1400 * 0.001 > 35 / 25)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_sampling_at_the_videos_own_rate_gives_every_frame(video, backend):
    path, _, _ = video
    with open_video(path, backend=backend) as reader:
        assert Sampling("fps", fps=FPS).indices(reader.num_frames, reader.timestamps, reader.duration).tolist() == \
            list(range(T))
