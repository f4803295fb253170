"""``watch --serve PORT``: a page of the stream being watched, on 127.0.0.1 only (FastAPI, served by uvicorn in a
thread of the watch process).

    GET /                 the page (static/live.html and live.js: the current label, a timeline of recent windows'
                          top scores, the closed events, the counts), which polls:
    GET /api/live         ``LiveState.snapshot()``: the latest window, the recent ones, the events, the counts

The state is what watch writes to its JSON lines, kept in memory for the last ``RECENT_WINDOWS`` windows and
``RECENT_EVENTS`` events, so the page costs the watch a lock per window and nothing else.
"""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .app import listening_socket

RECENT_WINDOWS = 240  # windows the timeline shows (4 minutes at a 1 s stride)
RECENT_EVENTS = 50
STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]


class LiveState:
    """What the page shows, updated by watch's main loop (``add``), read by the server's thread (``snapshot``)."""

    def __init__(self, source: str, labels: tuple[str, ...]):
        self.source, self.labels = source, labels
        self._lock = threading.Lock()
        self._windows: deque[dict] = deque(maxlen=RECENT_WINDOWS)
        self._events: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self._counts = {"windows": 0, "events": 0, "gaps": 0, "dropped": 0}

    def add(self, record: dict) -> None:
        """A JSON line of watch's: a window, an event or a gap."""
        with self._lock:
            kind = record["type"]
            if kind == "window":
                self._windows.append({k: record[k] for k in ("window", "connection", "stream_start_s",
                                                              "stream_end_s", "decided", "latency_s", "labels",
                                                              "scores")})
                self._counts["windows"] += 1
                self._counts["dropped"] = record["dropped_so_far"]
            elif kind in ("event", "gap"):
                self._events.append(record)
                self._counts["events" if kind == "event" else "gaps"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            windows = list(self._windows)
            return {"source": self.source, "labels": list(self.labels), "latest": windows[-1] if windows else None,
                    "windows": windows, "events": list(self._events)[::-1], "counts": dict(self._counts)}


def create_live_app(state: LiveState) -> FastAPI:
    app = FastAPI(title="clip-video watch", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)  # DNS rebinding: loopback names only

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "live.html", media_type="text/html")

    @app.get("/live.js")
    def script() -> FileResponse:
        return FileResponse(STATIC / "live.js", media_type="text/javascript")

    @app.get("/api/live")
    def live() -> dict[str, Any]:
        return state.snapshot()

    return app


class LiveServer:
    """The page's server on 127.0.0.1:``port`` in a daemon thread; the port is bound before this returns, so a busy
    one is a one-line error before the watch starts."""

    def __init__(self, state: LiveState, port: int):
        import uvicorn

        self.port = port
        sock = listening_socket("127.0.0.1", port)
        self.server = uvicorn.Server(uvicorn.Config(create_live_app(state), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
