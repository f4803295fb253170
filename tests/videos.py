"""Small test videos encoded with PyAV: every frame distinct, each file exercising one decoding hazard."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern(i: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A frame that identifies its index: a moving bar and a gradient whose brightness encodes i."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.stack([(x * 2 + i * 7) % 256, (y * 2 + i * 3) % 256, np.full_like(x, (i * 37) % 256)], -1)
    frame[:, (i * 5) % w : (i * 5) % w + 6] = 255
    return frame.astype(np.uint8)


def encode(path: Path, n: int, *, codec: str = "libx264", fmt: str | None = None, rate: int = 25,
           options: dict | None = None, pts: list[int] | None = None, time_base: Fraction | None = None,
           rotation: int | None = None, size: tuple[int, int] = (96, 128), pix_fmt: str = "yuv420p",
           container_options: dict | None = None) -> Path:
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern(i, *size), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def h264_bframes(path: Path, n: int = 60, gop: int = 12) -> Path:
    return encode(path, n, options={"g": str(gop), "bf": "3", "x264-params": "b-pyramid=normal:scenecut=0"})


def mpeg4_avi_bframes(path: Path, n: int = 60) -> Path:
    """MPEG-4 Part 2 in AVI with B-frames: the file type decord mis-seeks (decord#195)."""
    return encode(path, n, codec="mpeg4", fmt="avi", options={"bf": "2", "g": "12", "qscale": "3"})


def mpeg4_avi_not_coded(path: Path, n: int = 40, after: tuple[int, ...] = (9, 25)) -> Path:
    """MPEG-4 Part 2 in AVI (no B-frames) with a "not coded" VOP (an N-VOP, as DivX writes for dropped frames and
    after packed B-frames) muxed after each packet of ``after``: a 6-byte packet that FFmpeg decodes to no frame, so
    the file has ``n`` frames in ``n + len(after)`` packets."""
    # start code 000001B6; then P (01), modulo_time_base 0, marker 1, vop_time_increment (5 bits: the encoder's
    # resolution is the frame rate, 25), marker 1, vop_coded 0, and stuffing 0111 to the byte boundary
    bits = "01" + "0" + "1" + "00000" + "1" + "0" + "01111"
    not_coded = b"\x00\x00\x01\xb6" + int(bits, 2).to_bytes(2, "big")
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = 96, 128, "yuv420p"
        stream.options = {"g": "12", "qscale": "3"}
        packets = []
        for i in range(n):
            packets += stream.encode(av.VideoFrame.from_ndarray(pattern(i), format="rgb24"))
        packets += stream.encode()
        slot = 0
        for k, packet in enumerate(packets):
            packet.pts = packet.dts = slot
            out.mux(packet)
            slot += 1
            if k in after:
                extra = av.Packet(not_coded)
                extra.stream, extra.time_base = stream, packet.time_base
                extra.pts = extra.dts = slot
                out.mux(extra)
                slot += 1
    return path


def vfr(path: Path, n: int = 40) -> Path:
    """Variable frame rate: the first half at 10 fps, the second at 40 fps (timestamps in ms)."""
    pts, t = [], 0
    for i in range(n):
        pts.append(t)
        t += 100 if i < n // 2 else 25
    return encode(path, n, rate=25, pts=pts, time_base=Fraction(1, 1000), options={"bf": "0"})


def rotated(path: Path, n: int = 12, rotation: int = 90) -> Path:
    return encode(path, n, rotation=rotation, size=(64, 128))


def reference_frames(path: Path) -> list[np.ndarray]:
    """Every frame by sequential PyAV decoding: the definition of frame i (rotation not applied)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def faststart(path: Path, n: int = 60) -> Path:
    """H.264 MP4 with the moov atom before the media data, so a cut file keeps its full index."""
    return encode(path, n, options={"g": "12", "bf": "3"}, container_options={"movflags": "+faststart"})


def gop_variety(folder: Path) -> list[Path]:
    """One video of each GOP structure the reader must get exactly: an H.264 B-pyramid (some B-frames are
    references), an open GOP, no B-frames, HEVC in Matroska, and MPEG-4 Part 2 in AVI with B-frames."""
    open_gop = encode(folder / "open_gop.mp4", 90, options={"g": "15", "bf": "3",
                                                           "x264-params": "open-gop=1:scenecut=0"})
    return [h264_bframes(folder / "pyramid.mp4", n=120, gop=12), open_gop,
            encode(folder / "no_b.mp4", 60, options={"g": "10", "bf": "0"}),
            encode(folder / "hevc.mkv", 48, codec="libx265", options={"x265-params": "keyint=8:min-keyint=8:log-level=0"}),
            mpeg4_avi_bframes(folder / "mpeg4.avi", n=60)]
