"""DivX-style packed B-frames in MPEG-4 Part 2 AVIs, indexed so that the PyAV reader can seek in them exactly.

Video for Windows stores one frame per display slot, so DivX and XviD "pack" a B-frame into the chunk of the
reference frame decoded before it and fill the B-frame's own slot with a few-byte "not coded" placeholder (an N-VOP):
chunks ``I0, P2+B1, N, P4+B3, N, ...``. FFmpeg decodes such a file only from the start. Its ``mpeg4_unpack_bframes``
bitstream filter turns the chunks into standard MPEG-4 (``I0, P2, B1, P4, B3``: each placeholder carries the B-frame
packed before it), which a decoder reorders into display order. Here the filtered stream is read once, without
decoding (each packet's VOP type is in its header), and each chunk is given the display slot of the frame its
filtered packet decodes to: I and P frames show after the B-frames that follow them in decode order. The reader
then decodes through a fresh filter after every seek and stamps each filtered packet with its slot, so that frame
``i`` is the ``i``-th frame of sequential decoding, as everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

VOP_START = b"\x00\x00\x01\xb6"
DIVX_PACKED = b"DivX"  # user data "DivX503b1393p": the trailing p marks a packed bitstream
NOT_CODED_BYTES = 16  # a placeholder (N-VOP) is a start code and a few header bits


def vop_type(data: bytes) -> str | None:
    """The coding type of a packet's first VOP (I, P, B or S), or None if it holds none."""
    i = data.find(VOP_START)
    return None if i < 0 or i + 4 >= len(data) else "IPBS"[data[i + 4] >> 6]


def looks_packed(data: bytes) -> bool:
    """Whether a packet holds two VOPs (a packed pair) or DivX user data ending in ``p``."""
    if data.count(VOP_START) >= 2:
        return True
    i = data.find(DIVX_PACKED)
    return i >= 0 and data[i:i + 32].split(b"\x00")[0].endswith(b"p")


def unpacker(stream: Any) -> Any:
    from av.bitstream import BitStreamFilterContext

    return BitStreamFilterContext("mpeg4_unpack_bframes", stream)


def unpack_chunk(bsf: Any, chunk: Any, packed: PackedIndex) -> list[Any]:
    """A demuxed chunk of a packed file -> its filtered packet stamped with its frame's display slot as pts (the end's
    flush packet as it is; nothing for a placeholder that carries no B-frame)."""
    if chunk.size == 0:
        return [chunk]
    slot = packed.slot_of.get(int(chunk.pts)) if chunk.pts is not None else None  # before the filter takes it
    out = [p for p in bsf.filter(chunk) if p.size > NOT_CODED_BYTES]
    for p in out:
        p.pts, p.dts = slot, None
    return out


@dataclass(frozen=True)
class PackedIndex:
    slot_of: dict[int, int]  # a chunk's demuxed pts -> the display slot of the frame its filtered packet decodes to
    times: np.ndarray  # (n,) demuxed pts of the n coded frames, in display order
    keyframes: np.ndarray  # display slots of the I-frames
    seek_pts: dict[int, int]  # a keyframe's slot -> the demuxed pts of its chunk (what a seek is given)


def index_packed(container: Any, stream: Any) -> PackedIndex | None:
    """Read the file's packets through the unpacking filter (no decoding) and give each chunk its display slot;
    None if any coded packet has no VOP header or no timestamp (then only sequential decoding can be trusted)."""
    bsf, coded = unpacker(stream), []  # (demuxed pts, VOP type) of each coded filtered packet, in decode order
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        pts = int(packet.pts)  # read first: the filter takes the packet's data (and its fields) away
        for out in bsf.filter(packet):
            data = bytes(out)
            if len(data) <= NOT_CODED_BYTES:
                continue  # a placeholder with no B-frame to carry: a dropped frame, which decodes to nothing
            kind = vop_type(data)
            if kind is None:
                return None
            coded.append((pts, kind))
    slot_of: dict[int, int] = {}
    pending = None  # the last I or P frame: it shows once the B-frames after it (in decode order) have
    for pts, kind in coded:
        if kind == "B":
            slot_of[pts] = len(slot_of)
            continue
        if pending is not None:
            slot_of[pending] = len(slot_of)
        pending = pts
    if pending is not None:
        slot_of[pending] = len(slot_of)
    kinds = dict(coded)
    by_slot = sorted(slot_of, key=slot_of.__getitem__)
    keys = [slot_of[p] for p in by_slot if kinds[p] == "I"]
    return PackedIndex(slot_of, np.array(sorted(slot_of), dtype=np.int64), np.array(keys, dtype=np.int64),
                       {slot_of[p]: p for p in by_slot if kinds[p] == "I"})
