"""Procedurally generated action videos, written as real H.264 files with PyAV."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
# x264's macroblock-tree rate control made the encoding of identical frames differ with the process's earlier work
# (4 encodes of the same 40 clips in one process: 4 different outputs, decoded pixels up to 11 apart; each new
# demo run wrote another world). With it off, and with x264's assembly off, the bytes repeat; mbtree off costs
# nothing here, the assembly would be slow.
X264_PARAMS = "mbtree=0"
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def moving_square_frames(action: str, color: str, *, size: int = 64, num_frames: int = 24, square: int = 14,
                         seed: int = 0) -> np.ndarray:
    """uint8 (T, size, size, 3): a coloured square crossing a noisy grey background in one direction."""
    if action not in DIRECTIONS:
        raise ValueError(f"action {action!r}: choose one of {', '.join(DIRECTIONS)}")
    rng = np.random.default_rng(seed)
    dx, dy = DIRECTIONS[action]
    span = size - square
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = rng.integers(90, 130, (size, size, 3), dtype=np.uint8)
        progress = t / max(1, num_frames - 1)
        x = round(span / 2 + dx * (progress - 0.5) * span)
        y = round(span / 2 + dy * (progress - 0.5) * span)
        frame[y : y + square, x : x + square] = COLORS[color]
        frames[t] = frame
    return frames


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: int = 12, crf: int = 18, *,
                codec: str = "libx264", container: str | None = None, options: dict[str, str] | None = None,
                codec_tag: str | None = None) -> Path:
    """Encode uint8 RGB frames ((T, H, W, 3), or (H, W, 3) frames one by one, so a long video need not be held) with
    ``codec``: H.264 at ``crf`` in an MP4 by default. ``options`` replace the encoder's (``crf`` and ``X264_PARAMS``
    are H.264's only); ``container`` overrides the one the file name implies; ``codec_tag`` sets the FourCC (e.g. XVID
    in an AVI). The same frames give the same bytes, in any process and however often they are encoded."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec!r} is not a video codec")
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options) if options is not None else (
            {"crf": str(crf), "x264-params": X264_PARAMS} if codec == "libx264" else {})
        if codec_tag is not None:
            stream.codec_context.codec_tag = codec_tag
        for k, frame in enumerate(frames):
            if k == 0:
                stream.height, stream.width = frame.shape[:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_packed_avi(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: int = 25, gop: int = 12,
                     qscale: int = 3) -> Path:
    """An MPEG-4 Part 2 AVI with DivX-style packed B-frames, as DivX 5 and XviD wrote them for Video for Windows:
    FFmpeg's encoder (one B-frame between references), then each reference and the B-frame decoded after it share
    a chunk and a "not coded" placeholder (an N-VOP) fills the B-frame's slot; the first chunk carries the DivX user
    data whose trailing ``p`` tells decoders the file is packed (``pipeline.video.packed_bframes``)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    increment_bits = max(1, (fps - 1).bit_length())  # the encoder's vop_time_increment_resolution is the frame rate
    bits = "01" + "0" + "1" + "0" * increment_bits + "1" + "0"  # P, modulo_time_base, marker, increment, marker, not coded
    bits += "0" + "1" * ((8 - (len(bits) + 1) % 8) % 8)  # next_start_code's stuffing to the byte boundary
    not_coded = b"\x00\x00\x01\xb6" + int(bits, 2).to_bytes(len(bits) // 8, "big")
    vop_type = lambda data: data[data.find(b"\x00\x00\x01\xb6") + 4] >> 6  # noqa: E731 - 0 I, 1 P, 2 B
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "bf": "1", "qscale": str(qscale)}
        stream.codec_context.codec_tag = "DX50"
        packets = []
        for k, frame in enumerate(frames):
            if k == 0:
                stream.height, stream.width = frame.shape[:2]
            packets += stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
        packets += stream.encode()
        data = [bytes(p) for p in packets]
        first = data[0].find(b"\x00\x00\x01\xb6")
        data[0] = data[0][:first] + b"\x00\x00\x01\xb2DivX503b1393p" + data[0][first:]
        chunks, k = [], 0
        while k < len(data):
            if k + 1 < len(data) and vop_type(data[k + 1]) == 2:  # a reference and the B-frame decoded after it
                chunks += [(data[k] + data[k + 1], vop_type(data[k]) == 0), (not_coded, False)]
                k += 2
            else:
                chunks.append((data[k], vop_type(data[k]) == 0))
                k += 1
        for slot, (chunk, key) in enumerate(chunks):
            packet = av.Packet(chunk)
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, packets[0].time_base, slot, slot
            packet.is_keyframe = key
            out.mux(packet)
    return path
