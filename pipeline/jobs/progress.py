"""Progress of long work, on a terminal and in a log alike.

tqdm's bar shows only on a terminal (``disable=None``); with stderr redirected to a log, hours of training or tagging
printed nothing. ``progress`` gives the bar on a terminal and otherwise a line every ``LOG_EVERY_S`` seconds (and one
at the end): what is done of what, the rate, the time left, and whatever ``set_postfix`` was given (a loss)::

    train demo_temporal: 120/1500 steps (8 %), 3.41 steps/s, 6m45s left, loss 2.913
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

LOG_EVERY_S = 10.0  # seconds between lines in a log; $CLIP_VIDEO_PROGRESS_EVERY overrides it


def progress(total: int, *, desc: str, unit: str, initial: int = 0, enabled: bool = True,
             every_s: float | None = None) -> Any:
    """A tqdm bar where stderr is a terminal, else ``LogLines``; nothing at all unless ``enabled``."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    if every_s is None:
        every_s = float(os.environ.get("CLIP_VIDEO_PROGRESS_EVERY", LOG_EVERY_S))
    return LogLines(total, desc=desc, unit=unit, initial=initial, enabled=enabled, every_s=every_s)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class LogLines:
    """tqdm's ``update``/``set_postfix``/``close`` as a line on stderr every ``every_s`` seconds and at the end."""

    def __init__(self, total: int, *, desc: str, unit: str, initial: int = 0, enabled: bool = True,
                 every_s: float = LOG_EVERY_S):
        self.total, self.desc, self.unit, self.enabled, self.every_s = total, desc, unit, enabled, every_s
        self.n = self.start_n = initial
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self.shown = initial  # n as of the last line

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s"
                 + (f" ({100 * self.n / self.total:.0f} %)" if self.total else "")]
        parts.append(f"{rate:.2f} {self.unit}s/s")
        if rate > 0 and self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        elif self.n >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return ", ".join(parts)

    def _print(self, now: float) -> None:
        self.shown = self.n
        if self.enabled:
            print(self.line(now), file=sys.stderr, flush=True)

    def close(self) -> None:
        """The last line (once), for work that ran long enough to have had lines (a short run stays quiet)."""
        if not self.closed:
            self.closed = True
            now = time.monotonic()
            if self.n != self.shown and now - self.start >= self.every_s:
                self._print(now)
