"""serve: the JSON API gives what the index and the files hold (checked against search(), the Lance tables read
directly, and frames decoded here with PyAV), requests never reach a file the index does not list, and the page
works in a real browser (Playwright driving Debian's chromium)."""
from __future__ import annotations

import http.client
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import lance
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from servers import chromium, free_port, wait_for_port
from tag_world import LABELS, WORLD

from datasets.synthetic import write_video
from datasets.world import Clip, render
from pipeline.jobs.serve.app import create_app, serve
from pipeline.jobs.serve.archive import Archive
from pipeline.jobs.tag.job import TagSettings, tag
from pipeline.jobs.tag.query import SearchFilter, search
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
from pipeline.video.thumbnails import POSTER_BYTES

pytestmark = pytest.mark.slow  # every test here serves the index a trained model tagged (tagged)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
QUERY = "a red circle blinking"


@dataclass(frozen=True)
class Tagged:
    archive: Path
    index: Path
    secret: Path  # a real video outside the archive: no request may open it


def _frames(actions: list[str], colour: str, shape: str, seed: int) -> np.ndarray:
    """(T, H, W, 3): one rendered world clip per action, back to back (1 s each)."""
    return np.concatenate([render(Clip(colour, shape, a, seed=seed + i, split="train"), WORLD)
                           for i, a in enumerate(actions)])


def _avi(path: Path, frames: np.ndarray) -> Path:
    """MPEG-4 Part 2 in AVI: a file FFmpeg decodes and browsers cannot play."""
    return write_video(path, frames, WORLD.fps, codec="mpeg4")


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, trained) -> Tagged:
    root = tmp_path_factory.mktemp("serve")
    archive = root / "archive"
    write_video(archive / "mixed_1.mp4", _frames(list(WORLD.actions), "red", "circle", 200), fps=WORLD.fps, crf=12)
    write_video(archive / "mixed_2.mp4", _frames(list(WORLD.actions)[::-1], "blue", "square", 300), fps=WORLD.fps,
                crf=12)
    blinking = _frames(["blinking"] * 3, "red", "circle", 400)
    write_video(archive / "blinking.mp4", blinking, fps=WORLD.fps, crf=12)
    _avi(archive / "blinking.avi", blinking)
    write_video(archive / "growing.mp4", _frames(["growing"] * 3, "blue", "square", 500), fps=WORLD.fps, crf=12)
    for victim in ("victim_broken.mp4", "victim_link.mp4"):  # tagged fine, then changed by the tests below
        shutil.copy(archive / "growing.mp4", archive / victim)
    (archive / "broken.mp4").write_text("not a video\n")  # an error row: listed, but never served
    secret = root / "outside" / "secret.mp4"
    secret.parent.mkdir()
    shutil.copy(archive / "blinking.mp4", secret)
    out = root / "tags.parquet"
    settings = TagSettings(RuntimeSettings(str(trained), device="cpu", decode_workers=1), LABELS,
                           overrides=ProtocolOverrides(templates="none", pooling="temporal"), window_s=1.0, stride_s=0.5,
                           topk=3)
    summary = tag(settings, archive, out, progress=False)
    assert summary.ok == 7 and summary.failed == {"error": 1}
    return Tagged(archive.resolve(), Path(str(out) + ".index"), secret.resolve())


@pytest.fixture(scope="module")
def served(tagged) -> Iterator[Archive]:
    archive = Archive(tagged.index, "cpu")
    yield archive
    archive.close()


@pytest.fixture(scope="module")
def client(tagged, served) -> Iterator[TestClient]:
    with TestClient(create_app(tagged.index, archive=served)) as c:
        yield c


def _rows(index: Path, table: str, where: str) -> list[dict]:
    """Rows read straight from the Lance table at its committed version (not through TagIndex)."""
    import json

    version = json.loads((index / "state.json").read_text())["versions"][table]
    return lance.dataset(str(index / f"{table}.lance"), version=version).to_table(filter=where).to_pylist()


def _video_id(index: Path, name: str) -> int:
    rows = [r for r in _rows(index, "videos", "status = 'ok'") if Path(r["path"]).name == name]
    assert len(rows) == 1, name
    return rows[0]["video_id"]


def _decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    """(start time in seconds, RGB frame) of every frame, decoded here with PyAV."""
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def _closest(image: np.ndarray, frames: list[tuple[float, np.ndarray]]) -> tuple[int, float]:
    """(index of the frame the picture shows, its mean absolute pixel difference)."""
    h, w = image.shape[:2]
    diffs = [np.abs(np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR), np.float32)
                    - image).mean() for _, f in frames]
    return int(np.argmin(diffs)), float(np.min(diffs))


# ---- the API ----------------------------------------------------------------------------------------------------


def test_search_gives_the_hits_of_the_search_command(client, tagged):
    for query, params in ((QUERY, {}), ("something growing", {"kind": "segment"}), ("moving", {"label": "growing"})):
        got = client.get("/api/search", params={"q": query, "k": 7} | params)
        assert got.status_code == 200, got.text
        where = SearchFilter(label=params.get("label"), kind=params.get("kind"))
        expected = search(tagged.index, query, topk=7, device="cpu", where=where)
        assert got.json() == expected and len(expected) >= (3 if "label" in params else 7)
        assert all(h["labels"] == [params.get("label", h["labels"][0])] for h in expected)
    cli = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "search", str(tagged.index), QUERY,
                          "--topk", "7", "--format", "json", "--device", "cpu"], capture_output=True, text=True,
                         check=True)
    import json

    cli_hits = [json.loads(line) for line in cli.stdout.splitlines()]
    api_hits = client.get("/api/search", params={"q": QUERY, "k": 7}).json()
    assert [(h["video_id"], h["kind"], h["start_s"]) for h in api_hits] == [
        (h["video_id"], h["kind"], h["start_s"]) for h in cli_hits]
    assert np.allclose([h["score"] for h in api_hits], [h["score"] for h in cli_hits], atol=1e-6)
    assert client.get("/api/labels").json() == list(LABELS)
    for hit in api_hits:  # every hit's picture shows its video (no placeholder)
        t = {} if hit["kind"] == "video" else {"t": (hit["start_s"] + hit["end_s"]) / 2}
        assert client.get(f"/api/videos/{hit['video_id']}/thumbnail", params=t).headers["x-thumbnail"] == "frame"


def test_a_video_is_its_row_and_its_windows(client, tagged):
    for name in ("mixed_1.mp4", "blinking.avi"):
        vid = _video_id(tagged.index, name)
        got = client.get(f"/api/videos/{vid}").json()
        row = _rows(tagged.index, "videos", f"video_id = {vid}")[0]
        windows = sorted(_rows(tagged.index, "embeddings", f"video_id = {vid} AND kind = 'segment'"),
                         key=lambda r: r["start_s"])
        assert got["video"]["path"] == row["path"] and got["video"]["labels"] == row["labels"]
        assert got["video"]["duration_s"] == pytest.approx(4.0 if "mixed" in name else 3.0, abs=0.2)
        assert [(s["start_s"], s["end_s"], s["label"]) for s in got["segments"]] == [
            (w["start_s"], w["end_s"], w["label"]) for w in windows]
        assert len(got["segments"]) == got["video"]["windows"] >= 5
        assert "poster" not in got["video"] and "size" not in got["video"]
    assert client.get(f"/api/videos/{_video_id(tagged.index, 'blinking.avi')}").json()["video"]["media_type"] \
        == "video/x-msvideo"


def test_posters_are_small_frames_of_the_video(client, tagged):
    for name in ("mixed_1.mp4", "growing.mp4", "blinking.avi"):
        vid = _video_id(tagged.index, name)
        poster = _rows(tagged.index, "videos", f"video_id = {vid}")[0]["poster"]
        assert poster is not None and len(poster) <= POSTER_BYTES
        served = client.get(f"/api/videos/{vid}/thumbnail")
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        assert served.content == poster
        frames = _decoded(tagged.archive / name)  # 32 x 32 pixels: JPEG's error is large on so few
        index, diff = _closest(_jpeg(poster), frames)
        duration = len(frames) / WORLD.fps  # the poster is the middle window's middle frame: mid-video
        assert diff < 10 and abs(frames[index][0] - duration / 2) <= 0.25, (name, index, diff)


def test_thumbnail_at_a_time_is_the_frame_shown_then(client, tagged):
    vid = _video_id(tagged.index, "mixed_1.mp4")
    frames = _decoded(tagged.archive / "mixed_1.mp4")
    for t in (0.0, 0.3, 1.7, 3.9):
        got = client.get(f"/api/videos/{vid}/thumbnail", params={"t": t})
        assert got.status_code == 200 and got.headers["x-thumbnail"] == "frame"
        shown = max(i for i, (start, _) in enumerate(frames) if start <= t + 1e-9)
        index, diff = _closest(_jpeg(got.content), frames)
        assert diff < 10 and np.abs(frames[index][1].astype(float) - frames[shown][1]).mean() < 1, (t, index, shown)


def test_media_is_the_file_with_byte_ranges(client, tagged):
    vid = _video_id(tagged.index, "mixed_1.mp4")
    data = (tagged.archive / "mixed_1.mp4").read_bytes()
    whole = client.get(f"/api/videos/{vid}/media")
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    part = client.get(f"/api/videos/{vid}/media", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    assert client.get(f"/api/videos/{vid}/media", headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_a_broken_file_gives_a_placeholder_and_the_server_stays_up(client, tagged):
    victim = tagged.archive / "victim_broken.mp4"
    vid = _video_id(tagged.index, victim.name)
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)  # same size and time as when tagged, but no longer a video
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = client.get(f"/api/videos/{vid}/thumbnail", params={"t": 1.0})
    assert got.status_code == 200 and got.headers["x-thumbnail"] == "placeholder"
    assert got.headers["cache-control"] == "no-store"
    good = client.get(f"/api/videos/{_video_id(tagged.index, 'growing.mp4')}/thumbnail", params={"t": 1.0})
    assert good.status_code == 200 and good.headers["x-thumbnail"] == "frame"


def test_token_is_checked_on_every_request(tagged, served):
    with TestClient(create_app(tagged.index, token="s3cret", archive=served)) as c:
        assert c.get("/api/labels").status_code == 401
        assert c.get("/").status_code == 401
        assert c.get("/api/labels", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/labels", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        first = c.get("/", params={"token": "s3cret"})  # the link serve prints
        assert first.status_code == 200 and "clip_video_token" in first.headers["set-cookie"]
        assert c.get("/api/labels").status_code == 200  # the page's own requests carry the cookie
    with pytest.raises(ValueError, match="--token"):
        serve(tagged.index, host="0.0.0.0")


# ---- security: a live server, raw request paths (an HTTP client would normalise them) ----------------------------


_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextmanager
def _live(app) -> Iterator[int]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _raw_get(port: int, target: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", target, skip_accept_encoding=True)  # the target goes out exactly as written
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_requests_never_open_a_file_the_index_does_not_list(tagged, served):
    global _opened
    victim = tagged.archive / "victim_link.mp4"
    vid = _video_id(tagged.index, victim.name)
    broken = [r["video_id"] for r in _rows(tagged.index, "videos", "status != 'ok'")][0]
    victim.unlink()
    victim.symlink_to(tagged.secret)  # a listed file swapped for a link that leaves the archive
    (tagged.archive / "escape.mp4").symlink_to(tagged.secret)  # an unlisted link out of the archive
    secret, rel = str(tagged.secret), os.path.relpath(tagged.secret, tagged.archive)
    attempts = {
        "/api/videos/../../../../etc/passwd": 404, f"/api/videos/{rel}/media": 404,
        "/api/videos/..%2F..%2Foutside%2Fsecret.mp4/media": 404, "/api/videos/%2e%2e%2fsecret.mp4/media": 404,
        f"/api/videos/{secret}/media": 404, f"/{rel}": 404, "/../outside/secret.mp4": 404,
        "/..%2Foutside%2Fsecret.mp4": 404, "/%2e%2e/%2e%2e/etc/passwd": 404, "//etc/passwd": 404,
        "/escape.mp4": 404, f"/api/videos/{vid}/media": 409, f"/api/videos/{vid}/thumbnail?t=1": 200,
        f"/api/videos/{broken}/media": 404, "/api/videos/-1/media": 422, f"/api/videos/{2**70}/media": 422,
        "/api/videos/1e3/media": 422, "/api/videos/99999999/media": 404,
        "/api/search?q=" + "x" * 5000: 422, "/api/search?q=a&k=100000": 422, "/api/search?q=": 422,
        "/api/search?q=a&path=%5Bx%5D": 400, f"/api/videos/{vid}/thumbnail?t=1e300": 422,
        f"/api/videos/{vid}/thumbnail?t=nan": 422, f"/api/videos/{vid}/thumbnail?t=-1": 422,
        "/api/videos/" + "9" * 5000: 422,
    }
    with _live(create_app(tagged.index, archive=served)) as port:
        _opened = []
        try:
            got = {target: _raw_get(port, target) for target in attempts}
        finally:
            opened, _opened = _opened, None
    assert got == attempts
    thumb = TestClient(create_app(tagged.index, archive=served)).get(f"/api/videos/{vid}/thumbnail", params={"t": 1})
    assert thumb.headers["x-thumbnail"] == "placeholder"  # the swapped file is not decoded either
    # the swapped link was named (it is listed) but refused unfollowed (O_NOFOLLOW): its target was never opened
    assert not [p for p in opened if "secret" in p or "escape" in p or "passwd" in p], opened


def test_the_checked_descriptor_is_what_is_read(tagged, served, tmp_path):
    """No window between the check and the read: a file swapped after it was opened and checked is not what gets
    served (the response reads the checked descriptor through /proc)."""
    victim = tagged.archive / "growing.mp4"
    original = victim.read_bytes()
    listed = served.open_listed(_video_id(tagged.index, "growing.mp4"))
    try:
        moved = tmp_path / "growing.mp4"
        victim.rename(moved)
        victim.symlink_to(tagged.secret)  # swapped in after the check
        with open(listed.opened(), "rb") as f:
            assert f.read() == original != tagged.secret.read_bytes()
    finally:
        listed.close()
        victim.unlink()
        moved.rename(victim)


def test_a_host_that_is_not_this_machine_is_refused(tagged, served):
    app = create_app(tagged.index, archive=served, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/labels").status_code == 200
    assert TestClient(app, base_url="http://evil.example").get("/api/labels").status_code == 400  # DNS rebinding


# ---- the page, in a real browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_url(tagged) -> Iterator[str]:
    """``run_pipeline.py serve`` in its own process, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "serve", str(tagged.index), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving "), line + (proc.stdout.read() if proc.stdout else "")
        wait_for_port(port, proc, "serve")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--autoplay-policy="
                                                                  "no-user-gesture-required"])
        yield b
        b.close()


def test_page_search_plays_the_moment_and_shows_the_timeline(browser, page_url, tagged):
    expected = search(tagged.index, QUERY, topk=20, device="cpu")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{page_url}?q={QUERY.replace(' ', '+')}")  # a shared link runs its search on load
    page.wait_for_selector(".hit")
    names = page.locator(".hit .name").all_text_contents()
    assert names == [Path(h["path"]).name for h in expected]
    first = next(i for i, h in enumerate(expected) if h["kind"] == "segment" and h["start_s"] > 0
                 and Path(h["path"]).name == "mixed_1.mp4")  # four actions: four labels on its timeline
    hit = expected[first]
    page.locator(".hit").nth(first).click()
    page.wait_for_function("([s]) => { const v = document.querySelector('#player');"
                           " return !v.hidden && v.readyState >= 1 && v.currentTime >= s - 0.01 && v.currentTime < s + 2; }",
                           arg=[hit["start_s"]], timeout=20_000)
    page.wait_for_function("([s]) => { const v = document.querySelector('#player');"  # it plays from there
                           " return !v.paused && v.currentTime > s + 0.05; }", arg=[hit["start_s"]], timeout=20_000)
    windows = _rows(tagged.index, "embeddings", f"video_id = {hit['video_id']} AND kind = 'segment'")
    assert page.locator("#timeline .segment").count() == len(windows)
    labels = {w["label"] for w in windows}
    assert set(page.locator("#legend li").all_text_contents()) == labels
    page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete)")
    ARTIFACTS.mkdir(exist_ok=True)  # the README's screenshot (benchmarks/screenshots/serve.png) is this file
    page.screenshot(path=str(ARTIFACTS / "serve.png"))
    page.close()


def test_page_shows_frames_where_the_browser_cannot_play_and_filters_by_label(browser, page_url, tagged):
    page = browser.new_page()
    page.goto(page_url)
    page.fill("#q", "something blinking")
    page.select_option("#kind", "video")
    page.keyboard.press("Enter")
    page.wait_for_selector(".hit")
    names = page.locator(".hit .name").all_text_contents()
    expected = search(tagged.index, "something blinking", topk=20, device="cpu", where=SearchFilter(kind="video"))
    assert names == [Path(h["path"]).name for h in expected]
    page.locator(".hit").nth(names.index("blinking.avi")).click()
    page.wait_for_function("() => [...document.querySelectorAll('#strip img')].length === 6 && "
                           "[...document.querySelectorAll('#strip img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    assert page.locator("#player").is_hidden()
    # the label filter, from the keyboard: "/" focuses the search box
    page.locator("#view-title").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.select_option("#label", "growing")
    page.select_option("#kind", "")
    page.locator("button[type=submit]").click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('label') === 'growing'")
    expected = search(tagged.index, "something blinking", topk=20, device="cpu", where=SearchFilter(label="growing"))
    page.wait_for_function("([n]) => { const l = [...document.querySelectorAll('.hit .label')];"
                           " return l.length === n && l.every(x => x.textContent === 'growing'); }",
                           arg=[len(expected)])
    assert page.locator(".hit .name").all_text_contents() == [Path(h["path"]).name for h in expected]
    with page.expect_download() as download:
        page.click("#download")
    csv = Path(download.value.path()).read_text().splitlines()
    assert len(csv) == 1 + len(expected) and csv[1].split(",")[2] == f'"{expected[0]["path"]}"'
    page.close()
