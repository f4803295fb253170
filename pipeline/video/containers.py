"""What both readers ask of PyAV's containers: PyAV imported with an actionable error, a file opened safely (local
files only; playlists, stream descriptions and files without video refused), the video stream FFmpeg would pick,
the size a frame is scaled to, and a decoded frame as the RGB picture it displays."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .reader import VideoDecodeError, VideoOpenError

REFUSED_FORMATS = ("hls", "applehttp", "dash", "concat", "image2", "image2pipe", "sdp", "rtp", "rtsp", "tty", "lavfi")


def import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError("the PyAV backend needs PyAV: pip install av") from None
    return av


def scaled_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) with the short side scaled down to ``short_side`` if it is longer; frames are never enlarged."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def best_video_stream(container: Any, *, ignore_default: bool = False) -> Any | None:
    """The video stream FFmpeg's libraries pick when none is named, never an attached picture (cover art); None if
    there is no other video stream.

    ``av_find_best_stream`` (libavformat/avformat.c; used by ffplay, decord and torchcodec, while the ffmpeg CLI's own
    automatic mapping takes the highest resolution) ranks video streams by disposition (DEFAULT +1, hearing or
    visually impaired -1), then min(5, packets read while probing), bit rate, packets read while probing; a tie keeps
    the lower index. The probe's packet count (codec_info_nb_frames) is not exposed by PyAV, so FFmpeg's own function
    is asked (``streams.best``), with every attached picture given the lowest disposition for the call (FFmpeg lets
    cover art lose only on its single probed frame, which a one-frame video ties, and not at all against a stream of
    better disposition). ``ignore_default`` ranks as decord's bundled FFmpeg 4.1 does: without the DEFAULT flag.
    """
    disposition = import_av().stream.Disposition
    video = list(container.streams.video)
    real = [s for s in video if not s.disposition & disposition.attached_pic]
    if not real:
        return None
    saved = [s.disposition for s in video]
    try:
        for s, d in zip(video, saved):
            if d & disposition.attached_pic:
                s.disposition = disposition.hearing_impaired
            elif ignore_default:
                s.disposition = d & ~disposition.default
        best = container.streams.best("video")
    finally:
        for s, d in zip(video, saved):
            s.disposition = d
    return next((s for s in real if best is not None and s.index == best.index), real[0])


def open_container(path: Path) -> Any:
    """Open ``path`` with PyAV for local files only, refusing playlists and stream descriptions and files with no video
    stream."""
    av = import_av()
    try:
        container = av.open(str(path), options={"protocol_whitelist": "file"})
    except av.FFmpegError as e:
        raise VideoOpenError(path, f"cannot open: {reason(e)}") from None
    fmt = set(container.format.name.split(","))
    if fmt & set(REFUSED_FORMATS):
        container.close()
        raise VideoDecodeError(path, f"container format {container.format.name!r} is refused "
                                     "(playlists and stream descriptions can read other files)")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoDecodeError(path, f"no video stream ({', '.join(kinds)})")
    return container


def reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split())


def choose_video_stream(container: Any, wanted: int | None, path: Path) -> int:
    """The index of the stream to decode: ``wanted`` if it is a video stream, else FFmpeg's choice."""
    streams = container.streams
    attached = import_av().stream.Disposition.attached_pic
    video = [s.index for s in streams.video if not s.disposition & attached]
    if wanted is None:
        best = best_video_stream(container)
        if best is None:
            raise VideoDecodeError(path, "only an attached picture (cover art), no video stream")
        return best.index
    if wanted not in video:
        what = (f"out of range ({len(streams)} streams)" if not 0 <= wanted < len(streams)
                else "an attached picture (cover art)" if streams[wanted].type == "video"
                else f"{streams[wanted].type}, not video")
        raise VideoDecodeError(path, f"stream {wanted} is {what}; video streams: "
                                     f"{', '.join(map(str, video)) or 'none'}")
    return wanted


def rotation_of(frame: Any) -> int:
    try:
        return int(round(frame.rotation or 0)) % 360
    except (AttributeError, TypeError, ValueError):
        return 0


def display_rgb(reformatter: Any, frame: Any, resize: int | None) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3): scaled (AREA) so that its short side is at most ``resize`` and rotated
    as its display matrix says. ``reformatter``: one ``VideoReformatter`` kept by the caller between frames (it keeps
    its swscale context; building one per frame cost ~50x more on small frames)."""
    h, w = scaled_size(frame.height, frame.width, resize)
    if (h, w) != (frame.height, frame.width):
        rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    else:
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    k = (rotation_of(frame) // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
