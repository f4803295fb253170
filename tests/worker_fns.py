"""Task functions for the worker-pool tests (importable by reference from spawned workers)."""
from __future__ import annotations

import ctypes
import os
import signal
import time


def behave(task: tuple[str, int]):
    kind, value = task
    if kind == "ok":
        return value * 2
    if kind == "raise":
        raise ValueError(f"bad value {value}")
    if kind == "sleep":
        time.sleep(value)
        return "woke"
    if kind == "segfault":
        ctypes.string_at(0)  # a real SIGSEGV from native code
    if kind == "abort":
        os.kill(os.getpid(), signal.SIGABRT)
    if kind == "pid":
        return os.getpid()
    if kind == "hog":
        behave.hoard = bytearray(value << 20)  # keep it: resident memory the pool must notice
        behave.hoard[:: 4096] = b"x" * len(behave.hoard[:: 4096])
        return os.getpid()
    raise AssertionError(kind)


def auto_segfaults(request):
    """Stands in for decode_request on a file that crashes the auto (PyAV) path."""
    if request.backend == "auto":
        ctypes.string_at(0)
    return request.backend
