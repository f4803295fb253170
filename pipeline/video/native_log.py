"""What decoders' native code writes straight to the process's stderr, captured so that it never lands beside the
project's one-line errors: FFmpeg's ``av_log`` lines (``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0c8] moov atom not found``)
and decord's own C++ log (``[12:00:00] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ...``).

PyAV routes FFmpeg's log through Python and keeps it quiet; decord's bundled FFmpeg and its logger write to file
descriptor 2, which only redirecting that descriptor can catch. The descriptor is the process's, so a capture is kept
to the decord call it wraps (decode workers do nothing else meanwhile).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

CAPTURE_BYTES = 64 << 10  # what is read back of one capture: a corrupt file can make FFmpeg log a line per packet
_FFMPEG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")  # [h264 @ 0x55d0c8a0]
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # [15:17:36] /src/video/video_reader.cc:83:


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what is written to file descriptor 2 while the block runs; the yielded list holds its cleaned
    lines (``native_message``, blank ones dropped) once the block ends, however it ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(CAPTURE_BYTES).decode("utf-8", errors="replace")
            lines += [m for line in text.splitlines() if (m := native_message(line))]


def native_message(text: str) -> str:
    """A native log line or error text on one line, without its source prefixes (FFmpeg's ``[component @
    address]``, each of decord's time-and-source-file stamps, which its nested errors repeat): what it says."""
    return " ".join(_DECORD_PREFIX.sub("", _FFMPEG_PREFIX.sub("", text.strip())).split())
