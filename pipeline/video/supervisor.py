"""Supervised worker processes: per-task deadlines, crash detection, recycling, and one status per task.

A torch DataLoader gives none of this: one segfaulting worker ends the epoch and a hanging sample blocks forever.
Here each task runs in a worker process that the parent watches with ``multiprocessing.connection.wait``:

  - ``ok``: the function returned; ``error``: it raised (its stage and reason are kept, as a ``Failure``);
  - ``timeout``: no answer by the deadline, so the worker is killed and replaced;
  - ``crash``: the worker died (segfault, abort, OOM kill), so it is replaced.

A function may also be a generator: each item it yields reaches the parent at once as a ``part`` outcome (the task's
final outcome follows, with the generator's return value), so a long video streams out in bounded chunks. The pipe
holds at most one item, so a worker is never more than one item ahead of its consumer. The deadline is on progress:
it restarts with every part, so a task that keeps yielding may run as long as it needs and one that stalls is killed.

Workers are recycled after ``max_tasks`` tasks or when their resident memory passes ``max_rss_mb`` (decoders leak).
The function must be importable (picklable by reference); tasks and results must pickle.
"""
from __future__ import annotations

import ctypes
import inspect
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

MAX_STARTUP_FAILURES = 3
Status = Literal["ok", "error", "timeout", "crash", "part"]  # part: not final, more outcomes of the task follow
FailureStatus = Literal["error", "timeout", "crash"]


@dataclass(frozen=True)
class Failure:
    """Why a task (a video) failed, as the jobs record it: ``status`` (error: the task raised; timeout: no result in
    time, its worker killed; crash: its worker died), the ``stage`` it failed in (what the task raised names it, as
    ``stage``, else the pool's: ``decode``; ``model`` for an encoding failure) and the ``reason``, in one line."""

    status: FailureStatus
    stage: str
    reason: str

    def __str__(self) -> str:
        return f"{self.status}: {self.stage}: {self.reason}"


def timeout_failure(stage: str, timeout_s: float) -> Failure:
    """A task that sent nothing for ``timeout_s`` (its worker is killed): the same words whichever pool ran it."""
    return Failure("timeout", stage, f"no result within {timeout_s:g} s; worker killed")


@dataclass(frozen=True)
class Outcome:
    task_id: int
    status: Status
    result: Any = None
    failure: Failure | None = None  # where status is error, timeout or crash
    node_lost: bool = False  # a crash because the task's machine was lost (Ray), not by the task's doing


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of process ``pid`` (default: this one) in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere). Frame-sized buffers
    freed in the middle of the heap stay resident otherwise, and tagging an hour of video roughly doubled both the
    main process and its decode worker (bench_tag.py --long-minutes measures it). Called once per chunk of frames, it
    keeps both flat."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# glibc's mallopt parameter for the free memory kept at the top of the heap (malloc.h: M_TOP_PAD)
_M_TOP_PAD = -2
HEAP_PAD_BYTES = 512 << 20


def keep_freed_memory(pad: int = HEAP_PAD_BYTES) -> bool:
    """Have glibc's malloc keep up to ``pad`` bytes of freed heap instead of handing it back to the kernel at once.

    A training or inference step allocates and frees the same few-megabyte activations every time; by default glibc
    returns them to the kernel (an mmap or a heap trim) and the next step page-faults them back in, zero-filled. On
    the demo's training that churn was 11.5 million page faults and 51 s of system time, and keeping the memory made
    a step 16 % faster with bit-identical results (docs/benchmarks.md). PyTorch's CPU tuning guide reaches the same
    end with jemalloc or tcmalloc, which a pip install cannot bring. The cost is at most ``pad`` bytes of resident
    memory kept after a peak (``trim_heap`` still hands back what it is asked to). Returns False where malloc is not
    glibc's (musl, macOS): nothing changes there."""
    if _LIBC is None:
        return False
    _LIBC.mallopt.argtypes, _LIBC.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(_LIBC.mallopt(_M_TOP_PAD, pad))


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _worker_main(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """Run tasks until told to stop or the parent is gone. Ctrl-C is the parent's to handle (it stops the workers),
    and a parent that died leaves a broken pipe: either way the worker exits without a word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve_tasks(conn, fn)
    except (EOFError, OSError):  # the parent closed the pipe or died (BrokenPipeError, ConnectionResetError)
        return


def run_task(fn: Callable[[Any], Any], task: Any) -> Iterator[tuple[str, Any]]:
    """One task, as the messages a worker sends about it: ("part", item) for each item a generator yields, then
    ("ok", its return value) or ("error", (stage, reason)) where it raised. What a pipe worker sends, and what a Ray
    task yields (``ray_pool``)."""
    try:
        result = fn(task)
        if inspect.isgenerator(result):
            while True:
                try:
                    item = next(result)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield "part", item
        yield "ok", result
    except Exception as e:  # the function's own failure: reported as this task's status, the worker lives on
        yield "error", error_payload(e)


def withdraw_waiting(pending: deque[tuple[int, Any]], keep: Callable[[Any], bool]) -> None:
    """Drop from ``pending``, in place (a pool's ``map`` holds it), the (task_id, task) pairs whose task ``keep``
    rejects: the waiting half of both pools' ``withdraw``."""
    kept = [t for t in pending if keep(t[1])]
    pending.clear()
    pending.extend(kept)


def message_outcome(task_id: int, kind: str, payload: Any, stage: str) -> Outcome:
    """The Outcome of one of ``run_task``'s messages (part, ok or error); an error's stage is the pool's ``stage``
    unless the task named one."""
    if kind == "part":
        return Outcome(task_id, "part", result=payload)
    if kind == "ok":
        return Outcome(task_id, "ok", result=payload)
    task_stage, reason = payload
    return Outcome(task_id, "error", failure=Failure("error", task_stage or stage, reason))


def error_payload(e: Exception) -> tuple[str | None, str]:
    """(stage, one-line reason) of a task's exception: the stage it names, if any, and its reason or message."""
    reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
    return getattr(e, "stage", None), " ".join(str(reason).split())


def _serve_tasks(conn: Connection, fn: Callable[[Any], Any]) -> None:
    conn.send(("ready", None, rss_mb()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        task_id, task = msg
        for kind, payload in run_task(fn, task):
            try:
                conn.send((kind, (task_id, payload), rss_mb()))
            except (EOFError, OSError):  # the parent is gone: _worker_main ends quietly
                raise
            except Exception as e:  # a result the pipe cannot carry (it does not pickle): the task's own error
                conn.send(("error", (task_id, error_payload(e)), rss_mb()))
                break


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any]):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        with _sigint_ignored():  # from its first instruction: a Ctrl-C while it starts prints nothing there
            self.proc.start()
        child.close()
        self.ready = False
        self.task: tuple[int, Any] | None = None
        self.deadline = float("inf")
        self.done = 0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


def reap_helpers() -> None:
    """Stop and reap multiprocessing's resource tracker, which spawned workers start: left to itself it outlives
    this process by a moment and lingers as a zombie until init collects it. Call it when the work is over."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if getattr(tracker, "_pid", None) is not None:
        tracker._stop()  # type: ignore[attr-defined]  # closes its pipe (it exits) and waits for it


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a child starts (it inherits that, and Python then leaves it so). Only the main thread may
    change signal handlers; workers started elsewhere ignore it from ``_worker_main`` on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class WorkerPool:
    """Run ``fn(task)`` for many tasks in supervised processes; ``map`` yields one Outcome per task as each ends."""

    def __init__(self, fn: Callable[[Any], Any], *, num_workers: int = 2, timeout_s: float = 120.0,
                 max_tasks: int = 500, max_rss_mb: float = 2048.0, start_method: str = "spawn", stage: str = "decode"):
        """``stage``: what the tasks do, the stage their failures are recorded in unless what they raise names one."""
        if num_workers < 1:
            raise ValueError(f"num_workers ({num_workers}) must be >= 1")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0")
        self.fn, self.num_workers, self.timeout_s, self.stage = fn, num_workers, timeout_s, stage
        self.max_tasks, self.max_rss_mb = max_tasks, max_rss_mb
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self.restarts = 0
        self._startup_failures = 0  # workers that died before saying ready, in a row
        self._pending: deque[tuple[int, Any]] = deque()  # (task_id, task) not yet given to a worker
        self._withdrawn: set[int] = set()  # task_ids that get no further outcome
        self._next_id = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(now=exc_type is not None)

    def close(self, now: bool = False) -> None:
        """Stop the workers: each finishes its task first, unless ``now`` (the caller is leaving on an exception,
        Ctrl-C included, so their work is not wanted)."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            if not now:
                w.proc.join(timeout=5)
            w.kill()
        self._workers = []

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._ctx, self.fn)
        self.restarts += 1

    def submit(self, task: Any, *, first: bool = False) -> int:
        """Queue one more task while ``map`` runs (``first``: ahead of every task still waiting); its final Outcome
        comes out of that same ``map``. Returns its task_id."""
        task_id, self._next_id = self._next_id, self._next_id + 1
        if first:
            self._pending.appendleft((task_id, task))
        else:
            self._pending.append((task_id, task))
        return task_id

    def withdraw(self, keep: Callable[[Any], bool]) -> None:
        """Withdraw, while ``map`` runs, every task submitted so far that ``keep`` rejects: one still waiting never
        starts, one running has its worker replaced, and none of them gets a further outcome."""
        withdraw_waiting(self._pending, keep)
        self._withdrawn.update(w.task[0] for w in self._workers if w.task is not None and not keep(w.task[1]))

    def map(self, tasks: Iterable[Any]) -> Iterator[Outcome]:
        """Yield one final Outcome for every task (task_id = its position in ``tasks``; ``submit`` numbers on from
        there), in completion order, each preceded by the ``part`` outcomes of a generator task; a task ``withdraw``
        rejects gets none after that."""
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx, self.fn))
        self._pending, self._next_id, self._withdrawn = deque(), 0, set()
        for task in tasks:
            self.submit(task)
        pending = self._pending  # withdraw filters it in place
        running = 0
        while pending or running:
            for w in list(self._workers):
                if w.task is not None and w.task[0] in self._withdrawn:
                    self._replace(w)
                    running -= 1
            for w in self._workers:
                if w.ready and w.task is None and pending:
                    w.task = pending.popleft()
                    w.deadline = time.monotonic() + self.timeout_s
                    w.conn.send(w.task)
                    running += 1
            if not (pending or running):
                break
            now = time.monotonic()
            busy = [w for w in self._workers if w.task is not None]
            timeout = max(0.0, min((w.deadline for w in busy), default=now + 1.0) - now)
            ready = wait([w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers], timeout)
            for w in list(self._workers):
                outcome = self._poll(w, ready)  # a withdrawn task's too: a worker that just finished it is kept
                if outcome is not None:
                    running -= outcome.status != "part"
                    if outcome.task_id not in self._withdrawn:  # else withdrawn since this batch began (its
                        yield outcome  # worker, if still on it, is replaced next round)

    def _poll(self, w: _Worker, ready: list) -> Outcome | None:
        if w.conn in ready:
            try:
                kind, payload, rss = w.conn.recv()
            except (EOFError, OSError):
                kind, payload, rss = "dead", None, 0.0
                w.proc.join(timeout=5)
            if kind == "ready":
                w.ready = True
                return None
            if kind == "part":
                w.deadline = time.monotonic() + self.timeout_s
            elif kind in ("ok", "error"):
                w.task, w.done = None, w.done + 1
                if w.done >= self.max_tasks or rss > self.max_rss_mb:
                    self._replace(w)
            if kind in ("part", "ok", "error"):
                task_id, value = payload
                return message_outcome(task_id, kind, value, self.stage)
        if w.proc.sentinel in ready or not w.proc.is_alive():
            task = w.task
            w.proc.join(timeout=5)
            code = w.proc.exitcode
            self._startup_failures = 0 if w.ready else self._startup_failures + 1
            if self._startup_failures >= MAX_STARTUP_FAILURES:  # replacing it again would loop forever
                raise RuntimeError(f"worker processes die before they start (exit code {code}, "
                                   f"{self._startup_failures} in a row): a spawned worker imports the __main__ "
                                   "module, so a script must guard its work with if __name__ == '__main__'")
            self._replace(w)
            if task is not None:
                how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                return Outcome(task[0], "crash", failure=Failure("crash", self.stage,
                                                                 f"worker died ({how}) while on this task"))
            return None
        if w.task is not None and time.monotonic() >= w.deadline:
            task = w.task
            self._replace(w)
            return Outcome(task[0], "timeout", failure=timeout_failure(self.stage, self.timeout_s))
        return None
