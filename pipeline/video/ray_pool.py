"""The worker pool on a Ray cluster: the same tasks, outcomes and failures as ``supervisor.WorkerPool``, with each
task a Ray streaming-generator task on any node's CPU.

    ray.init (local: on 127.0.0.1 only)  ->  RayPool.map(tasks)  ->  Outcome per part, then ok | error | timeout | crash

A task runs ``supervisor.run_task`` (what a pipe worker runs), so an item a decoder yields reaches the driver as a
``part`` and its end as ``ok`` or ``error``; Ray holds at most ``BACKPRESSURE`` items of a task the driver has not
taken, which bounds memory as the pipe's one item does. The deadline is on progress, as in ``WorkerPool``: a task
that yields nothing for ``timeout_s`` is cancelled (its worker killed); a worker that dies (a segfault, an OOM
kill) is a ``crash``, and so is a task whose node was lost, marked ``node_lost``. ``open.DecodeWorkers``
decides retries, as for the local pool: a lost task runs again as it was (up to ``MAX_LOST_RERUNS`` times), a crash
on ``auto`` runs again on decord; Ray itself retries nothing.
Workers are recycled after ``max_tasks`` tasks (decoders leak); memory is Ray's to watch.

Ray is imported only here, and only when a pool or connection is made: ``pip install clip-video[ray]``.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .supervisor import (
    Failure,
    Outcome,
    error_payload,
    message_outcome,
    run_task,
    timeout_failure,
    withdraw_waiting,
)

BACKPRESSURE = 2  # items of one task Ray computes ahead of the driver
IDLE_WAIT_S = 1.0  # the longest wait for a next item while no started task has a deadline


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'clip-video[ray]' (ray[data]==2.60.0)") from None
    return ray


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes this node's address to be 127.0.0.1


def connect(address: str | None = None, **init: Any) -> bool:
    """Join the Ray cluster at ``address``, or start a local one that listens on 127.0.0.1 only, with ``init`` passed
    on to ``ray.init``; a driver already connected stays as it is. True where this call connected (the caller then
    disconnects).

    Ray's local default is the host's external address (and some sockets on every address): even
    ``_node_ip_address="127.0.0.1"`` is turned into it. With ``LOOPBACK_ONLY`` off, Ray's single-machine setting (its
    default on macOS and Windows), it keeps 127.0.0.1; the processes it starts inherit the setting."""
    if address:
        check_reachable(address)
    else:
        os.environ[LOOPBACK_ONLY] = "0"
    ray = import_ray()
    if ray.is_initialized():
        return False
    if not address:  # ray imported before this call read the setting at import: tell it again
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    local = {} if address else {"_node_ip_address": "127.0.0.1"}  # "local": a new instance, never one found running
    on_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own (an exit); the caller's stays
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             **(local | init))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once a ``host:port`` (``[v6]:port`` too) where nothing listens: Ray itself retries such an address
    for minutes, printing its own warnings. ``auto`` and other forms are left to Ray."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"--ray-address {address}: no Ray cluster answers there "
                              f"({e.strerror or type(e).__name__})") from None


def _task_messages(fn: Callable[[Any], Any], task: Any) -> Iterator[tuple[str, Any]]:
    yield "started", None  # the deadline runs from here, not from a wait in Ray's queue
    yield from run_task(fn, task)


class RayPool:
    """``WorkerPool``'s interface on Ray: ``map`` yields one final Outcome per task (task_id = its position; ``submit``
    numbers on), each preceded by its ``part`` outcomes; ``withdraw`` stops tasks no longer wanted."""

    def __init__(self, fn: Callable[[Any], Any], *, num_workers: int | None = None, timeout_s: float = 120.0,
                 max_tasks: int = 500, max_rss_mb: float = 2048.0, stage: str = "decode"):
        """``num_workers``: tasks in flight at once (None: the cluster's CPUs; a caller whose actors hold CPUs gives
        the rest, or a task queued for an actor's CPU takes it first when that actor restarts); ``max_rss_mb`` is
        kept for the interface (Ray's memory monitor watches its workers)."""
        ray = import_ray()
        if timeout_s <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0")
        self.ray, self.fn, self.timeout_s, self.stage = ray, fn, timeout_s, stage
        self.num_workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_returns="streaming", max_retries=0, max_calls=max_tasks,
                                  _generator_backpressure_num_objects=BACKPRESSURE)(_task_messages)
        self._pending: deque[tuple[int, Any]] = deque()
        self._running: dict[Any, tuple[int, Any, float]] = {}  # generator -> (task_id, task, deadline)
        self._withdrawn: set[int] = set()  # task_ids that get no further outcome
        self._next_id = 0

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Cancel whatever still runs (the caller is done with it, or leaving on an exception)."""
        for gen in list(self._running):
            self._cancel(gen)

    def submit(self, task: Any, *, first: bool = False) -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        (self._pending.appendleft if first else self._pending.append)((task_id, task))
        return task_id

    def withdraw(self, keep: Callable[[Any], bool]) -> None:
        withdraw_waiting(self._pending, keep)
        self._withdrawn.update(task_id for task_id, task, _ in self._running.values() if not keep(task))

    def map(self, tasks: Iterable[Any]) -> Iterator[Outcome]:
        self._pending, self._next_id, self._withdrawn = deque(), 0, set()
        for task in tasks:
            self.submit(task)
        while self._pending or self._running:
            for gen, (task_id, _, _) in list(self._running.items()):
                if task_id in self._withdrawn:
                    self._cancel(gen)
            while self._pending and len(self._running) < self.num_workers:
                task_id, task = self._pending.popleft()  # no deadline until it starts: one queued is not late
                self._running[self._remote.remote(self.fn, task)] = (task_id, task, math.inf)
            if not self._running:
                continue
            now = time.monotonic()
            timeout = min(deadline for _, _, deadline in self._running.values()) - now
            gens = list(self._running)
            ready, rest = self.ray.wait(gens, num_returns=1, timeout=max(0.0, min(timeout, IDLE_WAIT_S)))
            if ready and rest:  # every task with an item ready is served this round, not just the first
                ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for gen in ready:
                if self._running[gen][0] in self._withdrawn:  # since this round began: cancelled next round
                    continue
                outcome = self._take(gen)
                if outcome is None:
                    continue
                if outcome.status != "part":
                    del self._running[gen]
                yield outcome
            for gen, (task_id, _, deadline) in list(self._running.items()):
                if gen not in ready and time.monotonic() >= deadline:
                    self._cancel(gen)
                    if task_id not in self._withdrawn:
                        yield Outcome(task_id, "timeout", failure=timeout_failure(self.stage, self.timeout_s))

    def _take(self, gen: Any) -> Outcome | None:
        """The next message of a task whose next item is ready, as an Outcome (None: it started, its deadline runs)."""
        task_id, task, _ = self._running[gen]
        try:
            kind, payload = self.ray.get(next(gen))
        except StopIteration:  # run_task always ends with ok or error: a generator that stops without one is lost
            return Outcome(task_id, "crash", failure=Failure("crash", self.stage, "Ray task ended without a result"))
        except (self.ray.exceptions.NodeDiedError, self.ray.exceptions.ObjectLostError) as e:  # its node, or the
            # items it had computed ahead on that node, are gone: not the task's doing
            return Outcome(task_id, "crash", failure=Failure("crash", self.stage, "its node was lost while on this task "
                                                             f"(Ray: {type(e).__name__})"), node_lost=True)
        except self.ray.exceptions.RayTaskError as e:  # run_task catches what the task raises: this is Ray failing to
            # carry a message (an item that does not pickle), the task's own error, as in the local pool
            cause = e.cause if isinstance(e.cause, Exception) else e
            return message_outcome(task_id, "error", error_payload(cause), self.stage)
        except self.ray.exceptions.RayError as e:  # the worker died (a segfault, an OOM kill)
            return Outcome(task_id, "crash", failure=Failure("crash", self.stage,
                                                             f"worker died while on this task (Ray: {type(e).__name__})"))
        if kind in ("started", "part"):
            self._running[gen] = (task_id, task, time.monotonic() + self.timeout_s)
        return None if kind == "started" else message_outcome(task_id, kind, payload, self.stage)

    def _cancel(self, gen: Any) -> None:
        self._running.pop(gen, None)
        try:
            self.ray.cancel(gen, force=True)
        except Exception:  # noqa: BLE001 - already finished or gone: nothing left to stop
            pass
