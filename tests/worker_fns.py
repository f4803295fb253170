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
    if kind == "unpicklable":
        return lambda: value  # a result the pipe cannot carry
    if kind == "lock":
        import threading

        return threading.Lock()  # one that neither the pipe nor Ray (cloudpickle, which takes a lambda) can carry
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


def stream(task: tuple[str, int]):
    """A generator task: yields ``n`` parts ``pause`` apart and returns their count, or stalls after two."""
    kind, n = task
    for i in range(n):
        if kind == "stall" and i == 2:
            time.sleep(60)
        if kind == "raise" and i == 2:
            raise ValueError("part 2 is bad")
        time.sleep(0.4)
        yield i
    return n


def windows_then_segfault(task):
    """Stands in for decode_windows on a file whose PyAV decode crashes after its first chunk: the decord retry must
    not inherit that chunk."""
    import numpy as np

    from pipeline.features.window_decode import decode_windows

    gen = decode_windows(task)
    if task.backend == "auto":
        yield next(gen)
        chunk = next(gen)
        yield type(chunk)(chunk.first, chunk.positions, np.zeros_like(chunk.frames))  # wrong frames, then a crash
        time.sleep(1.0)  # once the parent has them
        ctypes.string_at(0)
    return (yield from gen)


def modules_after_decoding(task):
    """Run a decode worker's real function on ``task`` (a DecodeRequest, or a WindowTask for the tag job's), then say
    which heavy libraries this worker process has loaded."""
    import sys

    from pipeline.features.window_decode import decode_windows
    from pipeline.video.open import DecodeRequest, decode_request

    if isinstance(task, DecodeRequest):
        decode_request(task)
    else:
        for _ in decode_windows(task):
            pass
    return sorted(name for name in ("torch", "clip_model.api") if name in sys.modules)  # clip_model.geometry is free


def windows_logged(task):
    """decode_windows, logging which part of the video each task decoded (``<video>.tasks``: pid, window range, backend)
    so a test can see a long video's time ranges go to their own tasks."""
    from pipeline.features.window_decode import decode_windows

    with open(task.path + ".tasks", "a") as log:
        log.write(f"{os.getpid()} {task.window_range} {task.backend}\n")
    return (yield from decode_windows(task))


def windows_range_fails(task):
    """decode_windows, except that a time range beginning after window 0 fails as a decode error would, and a split
    video's first worker pauses 20 s after its header, then leaves ``<video>.woke``: a worker the failure withdrew
    never gets there."""
    from pathlib import Path

    from pipeline.features.window_decode import StageError, decode_windows

    if task.window_range is not None and task.window_range[0] > 0:
        raise StageError("decode", f"frames of windows {task.window_range} are corrupt")
    gen = decode_windows(task)
    header = next(gen)
    yield header
    if task.window_range is None and len(header.ranges) > 1:
        time.sleep(20)
        Path(task.path + ".woke").touch()
    return (yield from gen)


def windows_range_segfaults(task):
    """decode_windows, except that a time range's PyAV worker sends wrong frames and then crashes: its decord retry
    must replace them and the other ranges' windows must be kept."""
    import numpy as np

    from pipeline.features.window_decode import decode_windows

    gen = decode_windows(task)
    if task.window_range is not None and task.backend == "auto":
        yield next(gen)
        chunk = next(gen)
        yield type(chunk)(chunk.first, chunk.positions, np.zeros_like(chunk.frames))
        time.sleep(1.0)
        ctypes.string_at(0)
    return (yield from gen)


def windows_lose_node_once(task):
    """decode_windows, except that a whole video's first attempt, once its header and first chunk are out, writes its
    Ray node's id to ``<video>.lost`` and waits there (the test removes that node). Each task is logged to
    ``<video>.tasks`` (window range, backend)."""
    from pathlib import Path

    from pipeline.features.window_decode import decode_windows

    with open(task.path + ".tasks", "a") as log:
        log.write(f"{task.window_range} {task.backend}\n")
    gen = decode_windows(task)
    marker = Path(task.path + ".lost")
    if task.window_range is None and not marker.exists():
        import ray

        yield next(gen)
        yield next(gen)
        marker.write_text(ray.get_runtime_context().get_node_id())
        time.sleep(120)
    return (yield from gen)


def stream_or_lose_node(task: tuple[str, str, int]):
    """``stream``'s parts, 0.2 s apart; kind ``lose``: after two parts, write this Ray node's id to ``marker`` and
    wait there (the test removes that node)."""
    marker, kind, n = task
    for i in range(n):
        if kind == "lose" and i == 2:
            import ray

            with open(marker, "w") as f:
                f.write(ray.get_runtime_context().get_node_id())
            time.sleep(120)
        time.sleep(0.2)
        yield i
    return n


def paced_windows(task, pace_s: float = 0.05):
    """decode_windows, an item at most every ``pace_s`` seconds: a fast host's decoding slowed to the pace the node
    removal checks need (adding a replacement node takes over a second, and the videos committed meanwhile must
    not carry the job past its next removal). Where decoding is slower than that, nothing waits."""
    from pipeline.features.window_decode import decode_windows

    gen, last = decode_windows(task), time.monotonic()
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        time.sleep(max(0.0, last + pace_s - time.monotonic()))
        last = time.monotonic()
        yield item
