"""PyAV backend: exact frame indices by keyframe seeks on a packet index, or a sequential pass where the index
cannot be trusted.

The index is every video packet's presentation timestamp, read by demuxing (no decoding). Frame i is the i-th
smallest pts. To fetch frame i the reader seeks to the last keyframe at or before it and decodes forward, skipping
the decode of non-reference frames that are not wanted (``skip_frame=NONREF``, set per packet, whose pts is known
before decoding). A decoded frame whose pts is not in the index proves the index wrong: the request is redone by
sequential decoding. Containers whose timestamps are not presentation times (raw streams, anything outside
``INDEXED_CONTAINERS``) always decode sequentially, which is the definition of frame i.

AVI stores no presentation times, but FFmpeg's demuxer gives every packet one and each packet decodes to one frame,
so the same index holds, except for MPEG-4's "not coded" packets of at most ``AVI_NOT_CODED_BYTES`` (an N-VOP, which
decodes to nothing): DivX's packed B-frames are indexed through FFmpeg's unpacking filter (``packed_bframes``), any
other AVI with such packets decodes sequentially. Decoding after a seek checks every frame's pts against the index.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .containers import choose_video_stream, display_rgb, import_av, open_container, reason, rotation_of, scaled_size
from .packed_bframes import NOT_CODED_BYTES, PackedIndex, index_packed, looks_packed, unpack_chunk, unpacker
from .reader import MAX_PIXELS, VideoDecodeError, VideoInfo, VideoReader

INDEXED_CONTAINERS = ("mov", "mp4", "matroska", "webm", "avi")
AVI_NOT_CODED_BYTES = NOT_CODED_BYTES  # an N-VOP is a 4-byte start code and a few header bits; any real frame is larger
PACKED_PROBE_PACKETS = 64  # packets looked at for DivX packing (its user data is in the first, a packed pair early)
# Frame threading pays for its per-frame synchronisation only when frames carry real work: on tiny packets (a few
# hundred bytes a frame) slice threading was faster, on larger ones frame threading (bench_decode.py measures both).
FRAME_THREADING_MIN_BYTES = 1024
SEEK_COST_FRAMES = 12  # a seek (and decoder flush) costs about this many decoded frames: nearer keyframes are rolled to
KEYFRAME_ROLL_FRAMES = 600  # a keyframe-only pass demuxes up to this many frames to its next target rather than seek


class _IndexMismatch(Exception):
    pass


class PyAVReader(VideoReader):
    skip_nonref = True  # skip decoding unwanted non-reference frames while rolling forward (benchmarks toggle it)
    _rotation: int | None  # degrees, from a decoded frame; None until one has been decoded

    def __init__(self, path: Path, *, resize: int | None = None, max_pixels: int = MAX_PIXELS, threads: int = 1,
                 stream: int | None = None):
        """``stream``: the container's stream index to decode (as ffprobe numbers them); None takes FFmpeg's choice."""
        super().__init__()
        self.threads = threads  # > 1: decode runs of targets far apart in parallel threads
        self.frames_decoded = 0  # frames the decoder produced (skipped non-reference frames excluded): a cost meter
        self.av = import_av()
        self.path, self.resize = Path(path), resize
        self._container = self._open()
        try:
            self._probe(max_pixels, stream)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening and indexing

    def _open(self) -> Any:
        return open_container(self.path)

    def _probe(self, max_pixels: int, wanted: int | None) -> None:
        self._stream_index = choose_video_stream(self._container, wanted, self.path)
        stream = self._stream = self._container.streams[self._stream_index]
        cc = stream.codec_context
        cc.thread_type = "AUTO"
        h, w = cc.height, cc.width
        if h * w == 0:
            raise VideoDecodeError(self.path, "video stream has no frame size (corrupt header?)")
        if h * w > max_pixels and self.resize is None:
            raise VideoDecodeError(self.path, f"frame size {w}x{h} is over the {max_pixels}-pixel limit; "
                                              "ask for a resize to decode it scaled down")
        fmt = self._container.format.name
        index = self._demux_index() if any(name in INDEXED_CONTAINERS for name in fmt.split(",")) else None
        if index is not None and (len(index[0]) == 0 or len(np.unique(index[0])) != len(index[0])):
            index = None  # no packets, or pts shared by two packets: the pts cannot name frames
        self._packed: PackedIndex | None = None
        if index is not None and "avi" in fmt.split(",") and self._smallest_packet <= AVI_NOT_CODED_BYTES:
            index = None  # a packet that may decode to no frame (see the module doc): only decoding can count them
            if self._packed_hint and cc.name == "mpeg4":
                self._container.seek(0, stream=stream)
                self._packed = index_packed(self._container, stream)
        self._indexed = index is not None or self._packed is not None
        self.reorders = bool(stream.codec_context.has_b_frames)  # B-frames: decode order is not presentation order
        if self._packed is not None:
            self._init_packed(self._packed)
        elif index is not None:
            self._init_indexed(*index)
        else:
            self._init_sequential()
        stream = self._stream  # a sequential pass reopened the container: the old stream object is gone
        header = stream.frames
        if header and header != len(self.timestamps):
            self.warnings.append(f"header says {header} frames but {len(self.timestamps)} are present")
        self.num_frames, self.duration = len(self.timestamps), float(self._duration)
        self._coded_size, self._codec, self._format = (h, w), stream.codec_context.name, fmt
        self._info: VideoInfo | None = None

    @property
    def info(self) -> VideoInfo:
        """Built on first use: the display size needs the rotation, which the first decoded frame carries, so a
        reader that is only opened, sampled and read never pays for a separate probe decode."""
        if self._info is None:
            rotation = self._rotation
            if rotation is None:
                rotation = self._rotation = self._first_frame_rotation()
            dh, dw = scaled_size(*self._coded_size, self.resize)
            if rotation % 180:
                dh, dw = dw, dh
            fps = (self.num_frames / self.duration if self.duration > 0
                   else float(self._stream.average_rate or 0))
            self._info = VideoInfo(self.path, "pyav", self.num_frames, fps, dh, dw, rotation, self._codec,
                                   self._format, self.duration, self._stream_index)
        return self._info

    @property
    def keyframes(self) -> np.ndarray | None:
        return self._keyframes if self._indexed else None

    @property
    def seeks(self) -> bool:
        return self._indexed  # a container without a trustworthy index is decoded from the start every time

    def _demux_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every video packet's pts, keyframe flag and duration, without decoding; None if any pts is missing."""
        pts: list[int] = []
        keys: list[bool] = []
        durs: list[int] = []
        total_bytes = 0
        self._smallest_packet, self._packed_hint = 1 << 62, False
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
                durs.append(packet.duration or 0)
                total_bytes += packet.size
                self._smallest_packet = min(self._smallest_packet, packet.size)
                if len(pts) <= PACKED_PROBE_PACKETS:
                    self._packed_hint = self._packed_hint or looks_packed(bytes(packet))
        except self.av.FFmpegError as e:
            self.warnings.append(f"demuxing stopped after {len(pts)} packets: {reason(e)}")
        if pts and total_bytes / len(pts) < FRAME_THREADING_MIN_BYTES:
            self._stream.codec_context.thread_type = "SLICE"
        return np.array(pts, dtype=np.int64), np.array(keys, dtype=bool), np.array(durs, dtype=np.int64)

    def _init_indexed(self, pts: np.ndarray, keys: np.ndarray, durs: np.ndarray) -> None:
        order = np.argsort(pts, kind="stable")
        self._pts = pts[order]  # presentation order: frame i has pts self._pts[i]
        self._pts_to_index = {int(p): i for i, p in enumerate(self._pts)}
        self._keyframes = np.flatnonzero(keys[order])  # frame indices of keyframes
        if len(self._keyframes) == 0 or self._keyframes[0] != 0:
            self._keyframes = np.concatenate([[0], self._keyframes]).astype(np.int64)
        tb = float(self._stream.time_base)
        self.timestamps = (self._pts - self._pts[0]) * tb
        last = int(durs[order][-1]) or (int(np.median(np.diff(self._pts))) if len(self._pts) > 1 else 0)
        self._duration = (self._pts[-1] - self._pts[0] + last) * tb
        self._rotation = None  # read from the first frame decoded

    def _init_packed(self, packed: PackedIndex) -> None:
        """Frame i is display slot i (the filtered packets are stamped with their slots when decoded)."""
        n = len(packed.times)
        self._pts, self._pts_to_index, self._keyframes = np.arange(n, dtype=np.int64), {i: i for i in range(n)}, packed.keyframes
        tb = float(self._stream.time_base)
        self.timestamps = (packed.times - packed.times[0]) * tb
        step = int(np.median(np.diff(packed.times))) if n > 1 else 1
        self._duration, self._rotation = (packed.times[-1] - packed.times[0] + step) * tb, None

    def _init_sequential(self) -> None:
        """Decode everything once: the frame count and timestamps are what decoding yields."""
        times, rotation = [], 0
        for i, frame in self._decode_from_start():
            if i == 0:
                rotation = rotation_of(frame)
            times.append(frame.time if frame.time is not None else float("nan"))
        if not times:
            raise VideoDecodeError(self.path, "no decodable video frames")
        t = np.array(times, dtype=np.float64)
        rate = float(self._stream.average_rate or self._stream.guessed_rate or 0) or 25.0
        if np.isnan(t).any() or np.any(np.diff(t) < 0):
            t = np.arange(len(t)) / rate
        self.timestamps = t - t[0]
        self._duration = self.timestamps[-1] + 1.0 / rate
        self._rotation = rotation

    def _first_frame_rotation(self) -> int:
        self._seek(0)
        for frame in self._frames(skip_nonref=lambda _: False):
            return rotation_of(frame)
        raise VideoDecodeError(self.path, "no decodable video frames")

    # ------------------------------------------------------------------ decoding

    def _seek(self, frame_index: int) -> None:
        at = self._packed.seek_pts[frame_index] if self._packed is not None else self._pts[frame_index]
        self._container.seek(int(at), stream=self._stream, backward=True, any_frame=False)

    def _frames(self, skip_nonref, keys_only: bool = False) -> Iterator[Any]:
        """Decoded frames from the current position; ``skip_nonref(packet_pts)`` picks NONREF skipping per packet;
        ``keys_only`` decodes keyframes alone (``NONKEY``: every other packet is only demuxed).

        FFmpeg's decode errors arrive as exceptions and become warnings. (FFmpeg's log is not captured: PyAV's log
        callback is process-wide and deadlocks against frame-threaded decoders freed in another thread.)
        """
        cc = self._stream.codec_context
        current = "DEFAULT"
        packed, bsf = self._packed, unpacker(self._stream) if self._packed is not None else None
        try:
            for demuxed in self._container.demux(self._stream):
                for packet in unpack_chunk(bsf, demuxed, packed) if packed is not None else (demuxed,):
                    wanted = "NONKEY" if keys_only else \
                        "NONREF" if packet.pts is not None and skip_nonref(packet.pts) else "DEFAULT"
                    if wanted != current:  # setting it costs a property call per packet: only on change
                        cc.skip_frame = current = wanted
                    try:
                        for frame in cc.decode(packet):
                            self.frames_decoded += 1
                            yield frame
                    except self.av.FFmpegError as e:
                        self.warn(f"decode error at pts {packet.pts}: {reason(e)}")
        except self.av.FFmpegError as e:
            self.warn(f"demux error: {reason(e)}")
        finally:
            cc.skip_frame = "DEFAULT"

    def _decode_from_start(self) -> Iterator[tuple[int, Any]]:
        """(i, frame) for every frame from the start: a freshly opened container, so no seek has to be trusted."""
        self._container.close()
        self._container = self._open()
        self._stream = self._container.streams[self._stream_index]
        self._stream.codec_context.thread_type = "AUTO"
        yield from enumerate(self._frames(skip_nonref=lambda _: False))

    def _convert(self, frame: Any) -> np.ndarray:
        """RGB uint8 (H, W, 3), scaled down if asked and rotated for display (``display_rgb``, one reformatter per
        reader)."""
        if getattr(self, "_reformatter", None) is None:
            self._reformatter = self.av.video.reformatter.VideoReformatter()
        if self._rotation is None:
            self._rotation = rotation_of(frame)
        return display_rgb(self._reformatter, frame, self.resize)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        try:
            got = self._read_parallel(indices) if self._indexed else self._read_sequential(indices)
        except _IndexMismatch as e:
            self.warn(f"packet index disagrees with decoding ({e}); decoded sequentially")
            self._indexed = False
            got = self._read_sequential(indices)
        if not got:
            raise VideoDecodeError(self.path, f"none of frames {indices[:5].tolist()} of {self.num_frames} could "
                                              "be decoded (truncated or corrupt file?)")
        missing = [int(i) for i in indices if int(i) not in got]
        if missing:  # best effort, never silent: the nearest decoded frame stands in, and the result says so
            have = np.array(sorted(got))
            for i in missing:
                got[i] = got[int(have[np.abs(have - i).argmin()])]
            self.warn(f"frames {missing[:10]} could not be decoded; each was replaced by the nearest decoded frame")
        return np.stack([got[int(i)] for i in indices])

    def _read_parallel(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Split the targets into ``threads`` runs at keyframe boundaries; each extra run gets its own container and
        thread (FFmpeg decodes without the GIL). Worth it only where cores are idle, hence opt-in."""
        keys = np.array([self._key_before(int(i)) for i in indices])
        starts = np.flatnonzero(np.diff(keys)) + 1  # where a new keyframe group begins
        if self.threads < 2 or len(starts) == 0:
            return self._read_indexed(indices)
        wanted = np.arange(1, self.threads) * len(indices) / self.threads  # equal shares of the targets
        cuts = starts[np.minimum(np.searchsorted(starts, wanted), len(starts) - 1)]  # moved to a group boundary
        runs = np.split(indices, np.unique(cuts))
        helpers = [self._sibling() for _ in runs[1:]]
        try:
            with ThreadPoolExecutor(len(helpers)) as pool:
                futures = [pool.submit(h._read_indexed, run) for h, run in zip(helpers, runs[1:])]
                got = self._read_indexed(runs[0])
                for future in futures:
                    got.update(future.result())
        finally:
            for h in helpers:
                self.frames_decoded += h.frames_decoded
                for w in h.warnings:
                    self.warn(w)
                h.close()
        return got

    def _sibling(self) -> PyAVReader:
        """A reader over the same file sharing this one's index, with its own container (no re-demuxing)."""
        twin = object.__new__(PyAVReader)
        twin.__dict__.update(self.__dict__)
        twin.warnings, twin.frames_decoded, twin._reformatter = [], 0, None
        twin._container = twin._open()
        twin._stream = twin._container.streams[self._stream_index]
        twin._stream.codec_context.thread_type = self._stream.codec_context.thread_type
        return twin

    def _key_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _read_indexed(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Seek to the keyframe before each run of targets and decode forward, skipping unwanted non-ref frames.
        Targets that are all keyframes are read in keyframe-only passes first (each decodes alone, so its pixels are
        a full decode's); any the decoder did not give are read the usual way."""
        got: dict[int, np.ndarray] = {}
        if np.isin(indices, self._keyframes).all():
            got = self._read_keyframes(indices)
            indices = np.array([i for i in indices if int(i) not in got], dtype=np.int64)
        targets = [int(i) for i in indices]  # sorted, unique
        wanted, wanted_pts = set(targets), {int(self._pts[i]) for i in targets}
        j = 0
        while j < len(targets):
            key = self._key_before(targets[j])
            self._seek(key)
            stream_ended = True
            skip = (lambda p: p not in wanted_pts) if self.skip_nonref else (lambda _: False)
            for frame in self._frames(skip_nonref=skip):
                i = self._pts_to_index.get(frame.pts)
                if i is None:
                    raise _IndexMismatch(f"decoded pts {frame.pts} is not in the index")
                if i < key:  # leading frames of an open GOP, decoded without their references
                    continue
                if i in wanted and i not in got:
                    got[i] = self._convert(frame)
                while j < len(targets) and targets[j] in got:
                    j += 1
                if j == len(targets) or self._key_before(targets[j]) > i + SEEK_COST_FRAMES:  # a seek saves work
                    stream_ended = False
                    break
            if stream_ended:
                break  # frames never decoded are reported by _read
        return got

    def _read_keyframes(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Keyframe targets by ``NONKEY`` passes: the packets between two targets are demuxed, not decoded, so a
        pass seeks again only across more than ``KEYFRAME_ROLL_FRAMES`` frames."""
        got: dict[int, np.ndarray] = {}
        targets = [int(i) for i in indices]  # sorted, unique keyframes
        j = 0
        while j < len(targets):
            self._seek(targets[j])
            start, ended = j, True
            for frame in self._frames(skip_nonref=lambda _: False, keys_only=True):
                i = self._pts_to_index.get(frame.pts)
                if i is None:
                    raise _IndexMismatch(f"decoded pts {frame.pts} is not in the index")
                if i in targets[j:j + 1]:
                    got[i] = self._convert(frame)
                while j < len(targets) and targets[j] <= i:
                    j += 1
                if j == len(targets) or targets[j] > i + KEYFRAME_ROLL_FRAMES:
                    ended = False
                    break
            if ended or j == start:
                break  # the stream ended, or gave nothing new: the usual path reads what is left
        return got

    def _read_sequential(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        wanted, last = set(indices.tolist()), int(indices[-1])
        got: dict[int, np.ndarray] = {}
        for i, frame in self._decode_from_start():
            if i in wanted:
                got[i] = self._convert(frame)
            if i >= last:
                break
        return got

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            if getattr(self, "_info", 0) is None:  # settle info while the file is open (it may need a decode)
                try:
                    _ = self.info
                except (VideoDecodeError, self.av.FFmpegError):
                    pass
            container.close()
            self._container = None

