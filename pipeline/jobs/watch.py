"""The watch job: actions recognised as they happen in a live source (``run_pipeline.py watch SOURCE``).

A reader thread decodes the source (``pipeline.video.live``), fills sliding windows as ``tag`` places them and hands
each complete window, its frames already resized for the model, to the main thread, which encodes and scores it with
the model's own protocol (every family: ``window_frames``, ``encode``, ``window_features``, ``state``). A frame that
several windows share is encoded once (per-frame families). Latency is bounded by design: at most ``max_pending``
windows wait for the model, and when it falls behind the oldest waiting ones are dropped and counted; a file read as
fast as it decodes (no ``--realtime``) is not live, so nothing of it is dropped. Memory holds the open windows'
frames and the embeddings of the frames they share, however long it runs.

Windows whose top label is the same (and at least ``above``, where given) merge into events, written when they
close: at another label, a gap in the stream, or the end (SIGINT closes the open event and exits 0). Output: one
JSON object a line (``window``, ``event``, ``gap``, ``summary``).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from clip_model.errors import UserError
from pipeline.features.frame_geometry import FrameGeometry, decode_cap
from pipeline.jobs.serve.live import LiveServer, LiveState
from pipeline.jobs.tag.outputs import top_labels
from pipeline.model.loading import load_model
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings, WindowLabels, resolve_device
from pipeline.model.video_text import VideoTextModel
from pipeline.video.live import Gap, LiveSource, LiveSourceError, WindowSampler

SHARED_FRAMES = 256  # frame embeddings kept for windows still to come (per-frame families): > the frames of a window


@dataclass(frozen=True)
class WatchSettings(WindowLabels):
    """runtime, labels, overrides, window_s, stride_s, topk (``WindowLabels``), then watch's own."""

    stride_s: float = 1.0
    topk: int = 3
    above: float | None = None  # a window is an action only where its top probability reaches this
    realtime: bool = False  # a file played at its own pace (live sources always are)
    max_pending: int = 2  # windows waiting for the model, at most; older ones are dropped when it falls behind

    job = "watch"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.above is not None and not 0 < self.above < 1:
            raise UserError(f"above ({self.above}) must lie in (0, 1)")
        if self.max_pending < 1:
            raise UserError(f"max_pending ({self.max_pending}) must be >= 1")


@dataclass
class Window:
    number: int
    connection: int
    start_s: float
    end_s: float
    numbers: list[int]  # the distinct frames' numbers (since the source opened), in pixels' order
    pixels: np.ndarray  # (U, S, S, 3) uint8: the distinct frames, resized for the model
    positions: np.ndarray  # (T,) int64 into pixels: the window's frames in time order (a frame may repeat)
    started: float  # wall clock when its first frame arrived
    completed: float  # wall clock when its last frame arrived


@dataclass
class Events:
    """Adjacent windows with the same label merge into events; ``add`` returns the event a window closes."""

    above: float | None
    current: dict | None = None

    def add(self, record: dict) -> dict | None:
        label = record["labels"][0] if self.above is None or record["scores"][0] >= self.above else None
        same = self.current is not None and label == self.current["label"] \
            and record["connection"] == self.current["connection"]
        if same:
            assert self.current is not None
            self.current.update(end_s=record["stream_end_s"], wall_end=record["wall_end"],
                                windows=self.current["windows"] + 1,
                                peak=max(self.current["peak"], record["scores"][0]))
            return None
        closed = self.close()
        if label is not None:
            self.current = {"type": "event", "label": label, "connection": record["connection"],
                            "start_s": record["stream_start_s"], "end_s": record["stream_end_s"],
                            "wall_start": record["wall_start"], "wall_end": record["wall_end"],
                            "peak": record["scores"][0], "windows": 1}
        return closed

    def close(self) -> dict | None:
        closed, self.current = self.current, None
        return closed


@dataclass
class WatchSummary:
    windows: int = 0
    dropped: int = 0
    events: int = 0
    gaps: int = 0
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        lat = np.percentile(self.latencies, [50, 95]) if self.latencies else [float("nan")] * 2
        return (f"{self.windows} windows, {self.events} events, {self.dropped} dropped (the model fell behind), "
                f"{self.gaps} gaps; latency p50 {lat[0]:.2f} s, p95 {lat[1]:.2f} s")


class _Feed:
    """The reader thread's hand-over: complete windows (bounded, oldest dropped when live) and gaps, in order."""

    def __init__(self, max_pending: int, live: bool):
        self.items: deque = deque()
        self.max_pending, self.live = max_pending, live
        self.dropped, self.ended = 0, False
        self.error: BaseException | None = None  # what ended the reader thread, for the main thread to raise
        self.cond = threading.Condition()

    def put(self, item: Any, stop: threading.Event) -> None:
        with self.cond:
            if isinstance(item, Window):
                waiting = [i for i in self.items if isinstance(i, Window)]
                if len(waiting) >= self.max_pending:
                    if self.live:
                        self.items.remove(waiting[0])
                        self.dropped += 1
                    else:  # a file read as fast as it decodes: wait for the model instead
                        while len(waiting) >= self.max_pending and not stop.is_set():
                            self.cond.wait(0.1)
                            waiting = [i for i in self.items if isinstance(i, Window)]
            self.items.append(item)
            self.cond.notify_all()

    def get(self, timeout: float = 0.2) -> Any:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            item = self.items.popleft() if self.items else None
            self.cond.notify_all()
            return item


def _read(source: LiveSource, sampler: WindowSampler, geometry: FrameGeometry, feed: _Feed,
          stop: threading.Event) -> None:
    """The reader thread: frames -> windows with their resized distinct frames -> ``feed``."""
    resized: OrderedDict[int, np.ndarray] = OrderedDict()  # frame number -> (S, S, 3), for frames windows share
    try:
        for item in source:
            if isinstance(item, Gap):
                feed.put(item, stop)
                continue
            for number, start, end, frames in sampler.push(item):
                distinct = dict(sorted({f.number: f for f in frames}.items()))  # number -> frame
                for n, f in distinct.items():
                    if n not in resized:
                        resized[n] = geometry.resize_crop(f.rgb[None])[0]
                while len(resized) > SHARED_FRAMES:
                    resized.popitem(last=False)
                order = {n: k for k, n in enumerate(distinct)}
                positions = np.array([order[f.number] for f in frames], dtype=np.int64)
                feed.put(Window(number, item.connection, start, end, list(distinct),
                                np.stack([resized[n] for n in distinct]), positions, frames[0].arrived, item.arrived),
                         stop)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, which reports it
        feed.error = e
    finally:
        feed.ended = True
        with feed.cond:
            feed.cond.notify_all()


class _Scorer:
    """A window's frames -> its top labels, with the model's protocol; per-frame embeddings shared between windows."""

    def __init__(self, model: VideoTextModel, labels: Sequence[str], templates: Any, topk: int):
        self.model, self.top = model, top_labels(model, labels, templates, topk)  # tag's label scoring
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # frame number -> (E,) embedding

    def __call__(self, w: Window) -> tuple[list[str], list[float]]:
        m = self.model
        frames = torch.from_numpy(w.pixels).permute(0, 3, 1, 2)  # (U, 3, S, S) uint8
        positions = torch.from_numpy(w.positions)[None]  # (1, T)
        if m.joint:  # the window's frames go through the model together
            feats = m.window_features(m.encode(m.transform.normalize(m.window_frames(frames, positions))), positions)
        else:
            numbers = w.numbers
            new = [i for i, n in enumerate(numbers) if n not in self.cache]
            if new:
                encoded = m.encode(m.transform.normalize(frames[new]))
                for i, row in zip(new, encoded):
                    self.cache[numbers[i]] = row
            while len(self.cache) > SHARED_FRAMES:
                self.cache.popitem(last=False)
            feats = m.window_features(torch.stack([self.cache[n] for n in numbers]), positions)  # (1, T, E)
        state = m.state(feats)  # one row
        labels, scores, _ = self.top.top(state.vectors.numpy(), None if state.tokens is None else state.tokens.numpy())
        return list(labels[0]), [float(p) for p in scores[0]]


def watch(settings: WatchSettings, source: str, out: IO[str] | None = None,
          live_line: Callable[[str], None] | None = None, stop: threading.Event | None = None,
          serve_port: int | None = None) -> WatchSummary:
    """Watch ``source`` until it ends or ``stop`` is set (or KeyboardInterrupt); JSON lines go to ``out``, and with
    ``serve_port`` to a live page on 127.0.0.1 too (``serve.live``)."""
    stop = stop or threading.Event()
    rt, asked = settings.runtime, settings.overrides
    try:
        reader = LiveSource(source, realtime=settings.realtime, stop=stop)  # a bad source is said before the model loads
    except LiveSourceError as e:
        raise UserError(str(e)) from None
    model = load_model(rt.model, resolve_device(rt.device), rt.precision, asked.pooling, asked.num_frames)
    frames = model.num_frames(asked.num_frames)
    reader.resize = decode_cap(model.preprocess, True)
    score = _Scorer(model, settings.labels, asked.templates or model.templates, settings.topk)
    feed = _Feed(settings.max_pending, reader.live or settings.realtime)
    thread = threading.Thread(target=_read, args=(reader, WindowSampler(settings.window_s, settings.stride_s, frames),
                                                  FrameGeometry.of(model.preprocess), feed, stop), daemon=True)
    events, summary = Events(settings.above), WatchSummary()
    state = LiveState(source, settings.labels) if serve_port is not None else None
    page = LiveServer(state, serve_port) if state is not None and serve_port is not None else None
    if page is not None and live_line is not None:
        live_line(f"live page at {page.url}")

    def emit(record: dict | None) -> None:
        if record is not None and state is not None:
            state.add(record)
        if record is not None and out is not None:
            out.write(json.dumps(record) + "\n")
            out.flush()

    thread.start()
    try:
        while True:
            item = feed.get()
            if item is None:
                if feed.ended and not feed.items:
                    break
                continue
            if isinstance(item, Gap):
                summary.gaps += 1
                closed = events.close()
                summary.events += closed is not None
                emit(closed)
                emit({"type": "gap", "wall_start": item.start, "wall_end": item.end, "reason": item.reason})
                continue
            labels, scores = score(item)
            decided = time.time()
            record = {"type": "window", "window": item.number, "connection": item.connection,
                      "stream_start_s": item.start_s, "stream_end_s": item.end_s,
                      "wall_start": item.started, "wall_end": item.completed, "decided": decided,
                      "latency_s": decided - item.completed, "labels": labels, "scores": scores,
                      "dropped_so_far": feed.dropped}
            summary.windows += 1
            summary.latencies = (summary.latencies + [record["latency_s"]])[-10_000:]
            emit(record)
            closed = events.add(record)
            summary.events += closed is not None
            emit(closed)
            if live_line is not None:
                live_line(f"{item.start_s:8.1f}-{item.end_s:.1f} s  {labels[0]} {scores[0]:.2f}  "
                          f"latency {record['latency_s']:.2f} s  dropped {feed.dropped}")
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        closed = events.close()
        summary.events += closed is not None
        emit(closed)
        summary.dropped = feed.dropped
        emit({"type": "summary", "windows": summary.windows, "events": summary.events, "dropped": summary.dropped,
              "gaps": summary.gaps})
        thread.join(timeout=10)
        if page is not None:
            page.close()
    if isinstance(feed.error, LiveSourceError):
        raise UserError(str(feed.error)) from None
    if feed.error is not None:
        raise feed.error
    return summary


def print_live(line: str) -> None:
    """The live line on a terminal (rewritten in place), a line per window in a log."""
    if sys.stderr.isatty():
        print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def cmd_watch(args: Any) -> int:
    """``run_pipeline.py watch``: the parsed arguments to a watch, its lines to ``--out``, a summary at the end."""
    from datasets.labels import load_labels

    settings = WatchSettings(RuntimeSettings.from_arguments(args), tuple(load_labels(args.labels)),
                             ProtocolOverrides.from_arguments(args), args.window, args.stride, args.topk,
                             above=args.above, realtime=args.realtime)
    out = None if args.out is None else open(Path(args.out), "a", encoding="utf-8")  # noqa: SIM115
    try:
        print(f"\n{watch(settings, args.source, out, print_live, serve_port=args.serve).line()}", file=sys.stderr)
    finally:
        if out is not None:
            out.close()
    return 0
