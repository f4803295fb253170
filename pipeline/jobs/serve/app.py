"""``run_pipeline.py serve OUT.index``: a read-only web app over a tag index (FastAPI, served by uvicorn).

    GET /                                    the page (static/: plain HTML, CSS and JavaScript, no build step)
    GET /api/labels                          the index's label vocabulary (for the label filter)
    GET /api/search?q=TEXT&k=N[&label=..&path=GLOB&kind=video|segment&after=S&before=S]
                                             hits, best first: the same as ``run_pipeline.py search``
    GET /api/videos/{video_id}               the video's row and its windows (start, end, top label, score)
    GET /api/videos/{video_id}/thumbnail[?t=SECONDS]   a JPEG: the stored poster, or the frame at t
    GET /api/videos/{video_id}/media         the file, with HTTP range requests (for <video>)

Why FastAPI: typed, validated query parameters (an oversized or malformed one is a 422 before any code of ours runs),
Starlette's FileResponse serves byte ranges, and uvicorn is its well-kept server. Security: it binds to loopback
unless told otherwise, and a non-loopback host needs a token, checked on every request (a ``token`` query parameter,
which the page turns into a same-site cookie, or an ``Authorization: Bearer`` header); files are opened only by id
through ``archive.Archive``.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import socket
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from clip_model.errors import UserError

from ..tag.index_state import IndexDamaged
from ..tag.query import SearchFilter
from .archive import Archive, FileChanged, ListedFile, NotFound

LOG = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE = "clip_video_token"
MAX_ID = 2**62
MAX_QUERY = 500  # characters of a search text (CLIP reads 77 tokens of it anyway)
MAX_K = 500

VideoId = Annotated[int, PathParam(ge=0, lt=MAX_ID)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(index: str | Path, *, token: str | None = None, device: str = "cpu",
               archive: Archive | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over ``index``; with ``token``, every request must carry it; with ``allowed_hosts``, its Host header
    must name one of them (a web page whose name was rebound to 127.0.0.1 is refused)."""
    archive = archive or Archive(index, device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        archive.close()

    app = FastAPI(title="clip-video archive", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is None:
            return await call_next(request)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or (credentials.strip() if scheme.lower() == "bearer" else ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "a token is required: open the link serve printed"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):  # the page's own requests then carry it as a cookie
            response.set_cookie(TOKEN_COOKIE, token, path="/", httponly=True, samesite="strict")
        return response

    @app.exception_handler(IndexDamaged)
    async def damaged(request: Request, e: IndexDamaged) -> JSONResponse:  # which file, not a traceback
        LOG.error("%s", e)
        return JSONResponse({"detail": str(e)}, status_code=500)

    @app.get("/api/labels")
    def labels() -> list[str]:
        return archive.labels()

    @app.get("/api/search")
    def search(q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY)],
               k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
               label: Annotated[str | None, Query(max_length=MAX_QUERY)] = None,
               path: Annotated[str | None, Query(max_length=1000)] = None,
               kind: Literal["video", "segment"] | None = None,
               after: Annotated[float | None, Query(ge=0, le=1e7)] = None,
               before: Annotated[float | None, Query(ge=0, le=1e7)] = None) -> list[dict]:
        try:
            where = SearchFilter(path, label or None, after, before, kind)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return archive.search(q, k, where)

    @app.get("/api/videos/{video_id}")
    def video(video_id: VideoId) -> dict:
        try:
            return archive.video(video_id)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/api/videos/{video_id}/thumbnail")
    def thumbnail(video_id: VideoId, t: Annotated[float | None, Query(ge=0, le=1e7)] = None) -> Response:
        try:
            data, shows_video = archive.thumbnail(video_id, t)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        return Response(data, media_type="image/jpeg", headers={
            "Cache-Control": "private, max-age=3600" if shows_video else "no-store",
            "X-Thumbnail": "frame" if shows_video else "placeholder"})

    @app.api_route("/api/videos/{video_id}/media", methods=["GET", "HEAD"])
    def media(video_id: VideoId) -> FileResponse:
        try:
            listed = archive.open_listed(video_id)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        except FileChanged as e:
            raise HTTPException(409, str(e)) from None
        return ListedFileResponse(listed)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app


class ListedFileResponse(FileResponse):
    """The checked descriptor's file (read through /proc, so what was checked is what is sent), closed once the
    response is done, whatever it was: a 206, a 200, or a 416 or 400 for a bad Range (a background task would not
    run on those, and every bad request would keep a descriptor open)."""

    def __init__(self, listed: ListedFile):
        super().__init__(listed.opened(), media_type=listed.media_type)
        self.listed = listed

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.listed.close()


def serve(index: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str = "cpu") -> None:
    """Run the app until interrupted; refuses a non-loopback host without a token."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise UserError(f"--host {host} is reachable from other machines: pass --token SECRET (every request must "
                         "carry it), or bind to 127.0.0.1")
    # DNS rebinding: a page on another site whose name resolves to 127.0.0.1 sends its own name as Host
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] + ([host] if host not in ("0.0.0.0", "::") else ["*"])
    app = create_app(index, token=token, device=device, allowed_hosts=hosts)
    sock = listening_socket(host, port)  # before the line that says it serves: a busy port is one line, not a lie
    shown = f"[{host}]" if ":" in host else host
    link = f"http://{shown}:{port}/" + (f"?token={urllib.parse.quote(token, safe='')}" if token else "")
    print(f"serving {Path(index).expanduser().resolve()} at {link}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (the server then takes it), or a one-line error saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        busy = " (another server has it: pick another --port)" if e.errno == errno.EADDRINUSE else ""
        raise UserError(f"--host {host} --port {port}: cannot listen there: {e.strerror}{busy}") from None
    return sock
