"""Round trips through serve's HTTP API on an index built by bench_index.py, against the same work done in process.

    python benchmarks/bench_index.py --videos 100000 --out /tmp/bench_1e5
    python benchmarks/bench_serve.py --index /tmp/bench_1e5/tags.index

The app runs under uvicorn on loopback in this process; requests go over a kept-alive HTTP connection. Per endpoint it
prints the median and 90th percentile over ``--queries`` requests (after one warm-up each), and for search the ratio
to the in-process call it wraps (``Archive.search``: text encoding and the vector search, no HTTP). Target: a search
round trip under 200 ms on a 10^5-video index.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import uvicorn

from pipeline.jobs.serve.app import create_app
from pipeline.jobs.serve.archive import Archive

QUERIES = ["a person riding a bike", "someone falling over", "a dog catching a frisbee", "cooking pasta",
           "a crowd cheering", "playing the guitar", "a car driving at night", "swimming in a lake",
           "a child laughing", "skiing down a slope", "typing on a keyboard", "a cat jumping", "juggling balls",
           "rain on a window", "a man running", "dancing in a kitchen", "painting a wall", "a bird flying",
           "climbing a rock", "cutting vegetables", "a football match"]


def timed(fn, n: int) -> list[float]:
    fn(0)  # warm-up: the first query loads the text encoder
    out = []
    for i in range(1, n + 1):
        t = time.perf_counter()
        fn(i)
        out.append(1000 * (time.perf_counter() - t))
    return out


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="a tags.index folder (bench_index.py writes DIR/tags.index)")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    archive = Archive(Path(args.index), "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.index, archive=archive), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(path: str) -> bytes:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        return body

    queries = [QUERIES[i % len(QUERIES)] for i in range(args.queries + 1)]
    hits: list[dict] = []

    def api_search(i: int) -> None:
        hits[:] = json.loads(get(f"/api/search?q={urllib.parse.quote(queries[i])}&k={args.k}"))

    report = {"index": str(args.index), "videos": sum(x.count("videos") for x in archive.indexes),
              "embedding_rows": sum(x.count("embeddings") for x in archive.indexes),
              "approximate": archive.indexes[0].has_vector_index()}
    report["search_in_process"] = summary(timed(lambda i: archive.search(queries[i], args.k), args.queries))
    report["search_http"] = summary(timed(api_search, args.queries))
    report["search_http_over_in_process"] = round(report["search_http"]["median_ms"]
                                                  / report["search_in_process"]["median_ms"], 2)
    ids = [h["video_id"] for h in hits] or [0]
    report["video_http"] = summary(timed(lambda i: get(f"/api/videos/{ids[i % len(ids)]}"), args.queries))
    # bench_index.py's stand-in files are empty: this is a decode worker's round trip ending in the placeholder
    report["thumbnail_http"] = summary(timed(lambda i: get(f"/api/videos/{ids[i % len(ids)]}/thumbnail"),
                                             args.queries))
    conn.close()
    server.should_exit = True
    print(json.dumps(report))


if __name__ == "__main__":
    main()
