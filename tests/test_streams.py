"""Which video stream is decoded in a file with several: FFmpeg's choice, never cover art, or the one asked for.

Files are built with PyAV; each stream is painted its own colour with a bar whose position encodes the frame index, so
a decoded frame says which stream and which frame it came from. decord, whose own FFmpeg picks the stream it decodes
(``av_find_best_stream``), is the independent reference for FFmpeg's choice where its rule and today's agree.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import av
import decord
import numpy as np
import pytest

from pipeline.video.containers import best_video_stream
from pipeline.video.open import DecodeRequest, decode_request, open_video
from pipeline.video.reader import VideoDecodeError
from pipeline.video.samplers import Sampling

RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 180, 30)
BAR = 4  # px


class Spec(NamedTuple):
    height: int
    width: int
    frames: int
    colour: tuple[int, int, int]
    options: dict[str, str]
    default: bool | None = None  # the DEFAULT disposition; None leaves it to the muxer (MP4: the first track only)


def painted(i: int, spec: Spec) -> np.ndarray:
    frame = np.empty((spec.height, spec.width, 3), np.uint8)
    frame[:] = spec.colour
    x = bar_x(i, spec.width)
    frame[:, x : x + BAR] = 255
    return frame


def bar_x(i: int, width: int) -> int:
    return (i * BAR) % (width - BAR)


def write_streams(path: Path, specs: list[Spec], *, codec: str = "libx264", fmt: str | None = None,
                  audio: bool = False, cover: bool = False) -> Path:
    """One video stream per spec, muxed interleaved (stream k is container stream k); optionally silent audio last,
    and cover art (a 32x32 MJPEG attached picture, which FFmpeg's MP4 muxer stores after the tracks)."""
    with av.open(str(path), "w", format=fmt) as out:
        picture = out.add_stream("mjpeg", rate=1) if cover else None
        if picture is not None:
            picture.height, picture.width, picture.pix_fmt = 32, 32, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
        streams = []
        for spec in specs:
            s = out.add_stream(codec, rate=25)
            s.height, s.width, s.pix_fmt, s.options = spec.height, spec.width, "yuv420p", spec.options
            if spec.default is not None:
                s.disposition = av.stream.Disposition.default if spec.default else av.stream.Disposition(0)
            streams.append(s)
        sound = out.add_stream("aac", rate=16000) if audio else None
        if picture is not None:
            out.mux(picture.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")))
            out.mux(picture.encode())
        for i in range(max((spec.frames for spec in specs), default=0)):
            for s, spec in zip(streams, specs):
                if i < spec.frames:
                    out.mux(s.encode(av.VideoFrame.from_ndarray(painted(i, spec), format="rgb24")))
        for s in streams:
            out.mux(s.encode())
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
            samples.sample_rate = 16000
            out.mux(sound.encode(samples))
            out.mux(sound.encode())
    return path


def check_frames(reader, spec: Spec, indices: list[int]) -> None:
    """Frames ``indices`` are frames of ``spec``'s stream: its size, its colour, the bar where frame i has it."""
    frames = reader.get_frames(indices).numpy().astype(int)
    assert frames.shape == (len(indices), spec.height, spec.width, 3)
    for frame, i in zip(frames, indices):
        x = bar_x(i, spec.width)
        assert abs(int(frame.sum(-1).mean(0).argmax()) - (x + BAR // 2)) <= BAR // 2, f"frame {i}: bar misplaced"
        background = np.delete(frame, np.s_[max(0, x - 2) : x + BAR + 2], axis=1)
        assert np.abs(background.reshape(-1, 3).mean(0) - spec.colour).max() < 20, f"frame {i}: wrong colour"


def bit_rates(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [s.codec_context.bit_rate or 0 for s in c.streams.video]


def decord_decodes(path: Path, specs: list[Spec]) -> int:
    """Which spec's stream decord (its own FFmpeg's ``av_find_best_stream``) decodes, told by size, length, colour."""
    vr = decord.VideoReader(str(path))
    first = vr[0].asnumpy().astype(int)
    hits = [k for k, spec in enumerate(specs)
            if (len(vr), first.shape[:2]) == (spec.frames, (spec.height, spec.width))
            and np.abs(first[:, -8:].reshape(-1, 3).mean(0) - spec.colour).max() < 20]
    assert len(hits) == 1, hits
    return hits[0]


# ---------------------------------------------------------------- a smaller first stream

SMALL = Spec(48, 64, 20, RED, {"crf": "35", "g": "5"}, default=True)
LARGE = Spec(96, 128, 40, BLUE, {"crf": "5", "g": "5"}, default=True)  # both flagged default: ranked by bit rate


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Stream 0: 64x48, 20 frames; stream 1: 128x96, 40 frames at a higher bit rate; stream 2: audio."""
    path = write_streams(tmp_path_factory.mktemp("streams") / "two.mp4", [SMALL, LARGE], audio=True)
    rates = bit_rates(path)
    assert rates[1] > rates[0] > 0, rates  # the premise of FFmpeg's choice
    return path


@pytest.mark.parametrize("backend", ["pyav", "auto", "decord"])
def test_ffmpegs_stream_is_decoded_not_the_first(two, backend):
    assert decord_decodes(two, [SMALL, LARGE]) == 1  # what FFmpeg's av_find_best_stream picks, seen from decord
    reader = open_video(two, backend)
    assert reader.info.stream == 1
    assert (reader.info.num_frames, reader.info.height, reader.info.width) == (40, 96, 128)
    check_frames(reader, LARGE, [0, 13, 39])
    assert reader.warnings == []


@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_a_stream_can_be_chosen(two, backend):
    reader = open_video(two, backend, stream=0)
    assert reader.info.stream == 0
    assert (reader.info.num_frames, reader.info.height, reader.info.width) == (20, 48, 64)
    check_frames(reader, SMALL, [19, 0, 7, 12])

def test_parallel_runs_decode_the_same_stream(two):
    """Runs of far-apart targets are decoded in extra containers: each must decode the stream chosen, not the first."""
    for stream, spec in ((None, LARGE), (0, SMALL)):
        with open_video(two, "pyav", stream=stream, threads=3) as reader:
            check_frames(reader, spec, [1, 6, 11, 16, 19][::-1])


def test_decode_request_carries_the_stream(two):
    clip = decode_request(DecodeRequest(str(two), Sampling("segments", num_frames=4), stream=0))
    assert clip.info.stream == 0 and tuple(clip.frames.shape) == (4, 48, 64, 3)
    assert decode_request(DecodeRequest(str(two), Sampling("segments", num_frames=4))).info.stream == 1


@pytest.mark.parametrize("stream, why", [
    (2, "stream 2 is audio, not video; video streams: 0, 1"),
    (3, r"stream 3 is out of range \(3 streams\); video streams: 0, 1"),
    (-1, r"stream -1 is out of range \(3 streams\); video streams: 0, 1"),
])
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_a_bad_stream_is_a_one_line_error(two, backend, stream, why):
    with pytest.raises(VideoDecodeError, match=rf"two\.mp4: {why}$"):
        open_video(two, backend, stream=stream)


def test_decord_checks_the_stream_it_decodes_and_refuses_another(two, monkeypatch):
    reader = open_video(two, "decord", stream=1)  # 40 frames, checked against PyAV's 40 of the same stream
    assert reader.info.stream == 1 and reader.info.num_frames == 40
    check_frames(reader, LARGE, [5, 39])
    with pytest.raises(VideoDecodeError, match=r"two\.mp4: decord decodes only stream 1 \(its FFmpeg's choice\), "
                                               r"not stream 0; use backend pyav or auto to choose a stream$"):
        open_video(two, "decord", stream=0)


def test_decord_checked_against_another_stream_is_an_error(two, tmp_path, monkeypatch):
    """Were PyAV's probe of another stream than decord's, the frame count or else the frame size would say so."""
    monkeypatch.setattr("pipeline.video.open.decord_stream", lambda path: (0, 0))
    with pytest.raises(VideoDecodeError, match=r"two\.mp4: decord counts 40 frames where stream 0 has 20$"):
        open_video(two, "decord")
    specs = [SMALL._replace(frames=10), LARGE._replace(frames=10)]
    path = write_streams(tmp_path / "same_length.mp4", specs)
    assert decord_decodes(path, specs) == 1
    with pytest.raises(VideoDecodeError, match=r"decord decodes 128x96 frames where stream 0 has 64x48$"):
        open_video(path, "decord")


# ---------------------------------------------------------------- bit rate alone, and the default flag

@pytest.mark.parametrize("higher", [0, 1])
def test_streams_differing_only_in_bit_rate(tmp_path, higher):
    """Same size, length and flags: FFmpeg takes the higher bit rate, wherever it is."""
    specs = [Spec(48, 64, 25, RED, {"crf": "40"}, True), Spec(48, 64, 25, BLUE, {"crf": "40"}, True)]
    specs[higher] = specs[higher]._replace(options={"crf": "5"})
    path = write_streams(tmp_path / "rates.mp4", specs)
    rates = bit_rates(path)
    assert rates[higher] > rates[1 - higher], rates
    assert decord_decodes(path, specs) == higher
    for backend in ("pyav", "decord"):
        reader = open_video(path, backend)
        assert reader.info.stream == higher, backend
        check_frames(reader, specs[higher], [0, 24])


def test_the_default_flag_outranks_bit_rate_except_in_decord(tmp_path):
    """FFmpeg 8 (PyAV's) ranks a stream flagged default first; decord's FFmpeg 4.1 does not look at the flag. Each
    backend decodes its FFmpeg's choice, and decord's frame count is checked against that same stream."""
    specs = [Spec(48, 64, 20, RED, {"crf": "5"}, False), Spec(96, 128, 30, BLUE, {"crf": "45"}, True)]
    path = write_streams(tmp_path / "flagged.mp4", specs)
    rates = bit_rates(path)
    assert rates[0] > rates[1], rates
    with av.open(str(path)) as c:
        assert [bool(s.disposition & av.stream.Disposition.default) for s in c.streams.video] == [False, True]
    reader = open_video(path, "pyav")
    assert reader.info.stream == 1
    check_frames(reader, specs[1], [0, 29])
    assert decord_decodes(path, specs) == 0
    reader = open_video(path, "decord")
    assert reader.info.stream == 0 and reader.info.num_frames == 20
    check_frames(reader, specs[0], [0, 19])
    assert reader.warnings == ["decord decodes stream 0, where FFmpeg (and pyav or auto) would pick stream 1: "
                               "decord's FFmpeg 4.1 ignores the default flag"]


def test_a_chosen_stream_in_a_sequentially_decoded_avi(tmp_path):
    """AVI is decoded sequentially from a reopened container: the chosen stream must survive the reopening."""
    specs = [Spec(48, 64, 12, RED, {"qscale": "2"}), Spec(64, 96, 16, GREEN, {"qscale": "2"})]
    path = write_streams(tmp_path / "two.avi", specs, codec="mpeg4", fmt="avi")
    for stream, spec in enumerate(specs):
        reader = open_video(path, "pyav", stream=stream)
        assert (reader.info.stream, reader.info.num_frames, reader.info.container) == (stream, spec.frames, "avi")
        check_frames(reader, spec, [spec.frames - 1, 3, 0])


# ---------------------------------------------------------------- cover art first

VIDEO = Spec(48, 64, 30, GREEN, {"g": "10"})


def udta_first(path: Path) -> Path:
    """Move the MP4's ``udta`` box (where FFmpeg's muxer puts cover art) ahead of its ``trak`` boxes, so that demuxers
    number the cover art stream 0. Children of ``moov`` may come in any order, and no offset points into ``moov``."""
    data = bytearray(path.read_bytes())
    start, end = next((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"moov")
    children = sorted(_boxes(data, start + 8, end), key=lambda b: {b"mvhd": 0, b"udta": 1}.get(b[0], 2))
    data[start + 8 : end] = b"".join(data[s:e] for _, s, e in children)
    path.write_bytes(bytes(data))
    return path


def _boxes(data: bytearray, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of the ISO-BMFF boxes laid end to end in data[start:end] (32-bit sizes only)."""
    boxes = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        assert size >= 8, "64-bit or open-ended box sizes are not handled"
        boxes.append((kind, start, start + size))
        start += size
    return boxes


@pytest.fixture(scope="module")
def cover_first(tmp_path_factory) -> Path:
    path = udta_first(write_streams(tmp_path_factory.mktemp("cover") / "cover.mp4", [VIDEO], cover=True))
    with av.open(str(path)) as c:  # the premise: stream 0 is cover art, stream 1 the video
        assert [(s.index, s.codec_context.name, bool(s.disposition & av.stream.Disposition.attached_pic))
                for s in c.streams.video] == [(0, "mjpeg", True), (1, "h264", False)]
    return path


@pytest.mark.parametrize("backend", ["pyav", "auto", "decord"])
def test_cover_art_first_is_skipped(cover_first, backend):
    reader = open_video(cover_first, backend)
    assert reader.info.stream == 1 and reader.info.codec == "h264"
    assert (reader.info.num_frames, reader.info.height, reader.info.width) == (30, 48, 64)
    assert abs(reader.info.duration - 30 / 25) < 1e-6
    check_frames(reader, VIDEO, [0, 9, 10, 29])
    assert reader.warnings == []


def test_cover_art_cannot_be_chosen(cover_first):
    with pytest.raises(VideoDecodeError, match=r"cover\.mp4: stream 0 is an attached picture \(cover art\); "
                                               r"video streams: 1$"):
        open_video(cover_first, "pyav", stream=0)
    assert open_video(cover_first, "pyav", stream=1).info.num_frames == 30


def test_cover_art_alone_is_not_a_video(tmp_path):
    """Music with cover art: the only video stream is the picture, which is refused rather than decoded as one frame."""
    path = write_streams(tmp_path / "song.m4a", [], fmt="mp4", audio=True, cover=True)
    with av.open(str(path)) as c:
        assert [bool(s.disposition & av.stream.Disposition.attached_pic) for s in c.streams.video] == [True]
    for backend in ("pyav", "auto", "decord"):
        with pytest.raises(VideoDecodeError, match=r"song\.m4a: only an attached picture \(cover art\), no video stream$"):
            open_video(path, backend)


def test_cover_art_is_never_chosen_even_where_ffmpeg_would(tmp_path):
    """Cover art flagged default before two videos that are not: FFmpeg 8 then ranks the picture first. The best of
    the videos by FFmpeg's remaining criteria (here bit rate) is taken instead, and the dispositions are left as
    they were."""
    path = udta_first(write_streams(tmp_path / "covers.mp4", [SMALL, LARGE], cover=True))
    d = av.stream.Disposition
    with av.open(str(path)) as c:
        cover, small, large = c.streams.video
        assert cover.disposition & d.attached_pic and large.codec_context.bit_rate > small.codec_context.bit_rate
        cover.disposition, small.disposition, large.disposition = d.attached_pic | d.default, d(0), d(0)
        assert c.streams.best("video").index == 0  # the premise
        assert best_video_stream(c).index == 2 and best_video_stream(c, ignore_default=True).index == 2
        assert [s.disposition for s in c.streams.video] == [d.attached_pic | d.default, d(0), d(0)]
