"""Probe the archive store and the server as an unlucky or hostile user would, and print a table of what held.

    python benchmarks/probe_archive.py [--kills 10] [--readers 4] [--requests 200] [--folder /tmp/probe]

Each probe runs on a fresh archive of generated videos tagged with a random tiny model (no weights needed):
  kill -9        ``tag`` killed at random moments ``--kills`` times, then run to the end: every video once in the
                 index and the outputs, labels equal to an uninterrupted run's
  compaction     ``--readers`` reader processes (count, scan and search in a loop) while a writer commits with a
                 compaction every 4 commits and versions kept 0 s (the worst case): readers that failed
  two writers    two ``retag`` to the same --out at once, ``--trials`` times: one refused in one line, the file whole
  lost state     state.json deleted: ``tag`` refuses, ``repair-index`` rebuilds it, outputs equal the first run's
  bit rot        one byte of a data file flipped: ``verify`` names the file
  full disk      (root only: a 512 KiB tmpfs, mounted and unmounted here) ``tag`` ends in one line, verify passes
  server         bad Range requests (descriptors before and after), a FIFO swapped in for a file, traversal
                 attempts, HEAD, a lowercase bearer, ``--requests`` in all, on 127.0.0.1 only

Nothing here is timed; it prints "held" or "FAILED" per probe, with what it saw, and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("moving left", "moving right", "growing", "blinking")


def cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_pipeline.py"), *args]


def tag_cmd(archive: Path, out: Path, labels: Path) -> list[str]:
    return cli("tag", str(archive), "--out", str(out), "--labels", str(labels), "--templates", "none",
               "--model", "random:tiny-vit", "--device", "cpu", "--precision", "fp32", "--window", "0.5",
               "--stride", "0.25", "--decode-workers", "2", "--commit-every", "1")


def make_archive(folder: Path, n: int) -> tuple[Path, Path]:
    from datasets.synthetic import write_video
    from datasets.world import Clip, WorldConfig, render

    world = WorldConfig(seed=0, colours=("red", "blue"), shapes=("square", "circle"), actions=LABELS)
    archive = folder / "archive"
    for i in range(n):
        clip = Clip(world.colours[i % 2], world.shapes[i // 2 % 2], LABELS[i % 4], seed=i, split="train")
        write_video(archive / f"v{i:03d}.mp4", render(clip, world), fps=world.fps)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return archive, labels


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def last_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line and not line.startswith("precision:")]


def probe_kills(folder: Path, kills: int) -> tuple[bool, str]:
    archive, labels = make_archive(folder, 48)
    clean = folder / "clean.csv"
    start = time.perf_counter()
    assert run(tag_cmd(archive, clean, labels)).returncode == 0
    seconds = time.perf_counter() - start
    out, state = folder / "t.csv", folder / "t.csv.index" / "state.json"
    rng, done = random.Random(0), 0
    for _ in range(kills):
        proc = subprocess.Popen(tag_cmd(archive, out, labels), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * seconds)  # anywhere from start-up to the outputs of a whole run
        if proc.poll() is None:
            proc.kill()
            done += 1
        proc.wait()
    final = run(tag_cmd(archive, out, labels))
    got, ref = pd.read_csv(out).set_index("path").sort_index(), pd.read_csv(clean).set_index("path").sort_index()
    commits = json.loads(state.read_text())["commits"]
    held = (final.returncode == 0 and list(got.index) == list(ref.index) and not got.index.duplicated().any()
            and (got["label_1"] == ref["label_1"]).all())
    return held, f"{done} kills landed, {commits} commits, {len(got)} rows for {len(ref)} videos"


READER = """
import sys, time
import numpy as np
from pipeline.jobs.tag.index import TagIndex
index = TagIndex.open(__import__('pathlib').Path(sys.argv[1]))
failures, reads, end = 0, 0, time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        index.count('embeddings'); sum(b.num_rows for b in index.scan('embeddings', ['path']))
        index.nearest(np.ones(32, np.float32), 3, columns=['path']); reads += 1
    except Exception as e:
        failures += 1; print(type(e).__name__, str(e)[:200], file=sys.stderr)
print(reads, failures)
"""


def probe_compaction(folder: Path, readers: int) -> tuple[bool, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_tag_index import _fill, _settings

    import pipeline.jobs.tag.index as index_module

    index_module.COMPACT_EVERY, index_module.KEEP_VERSIONS = 4, 0.0
    writer = index_module.TagIndex.create(folder / "i", _settings(), 32)
    _fill(writer, 4, commit_every=2)
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(folder / "i"), "12"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(readers)]
    end, k = time.time() + 10, 0
    while time.time() < end:
        _fill(writer, 2, commit_every=1, seed=k, prefix=f"/p{k}")
        k += 1
    results = [p.communicate(timeout=60) for p in procs]
    counts = [out.split() for out, _ in results]
    if any(len(c) != 2 for c in counts):  # a reader that died outside its loop
        raise RuntimeError("a reader died: " + " | ".join(err.strip()[-300:] for _, err in results))
    reads, failures = sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)
    return failures == 0, f"{reads} reads by {readers} readers across {writer.state.commits} commits " \
                          f"({writer.state.commits // 4} compactions): {failures} failed"


def probe_two_writers(folder: Path, trials: int) -> tuple[bool, str]:
    archive, labels = make_archive(folder, 6)
    out = folder / "t.csv"
    assert run(tag_cmd(archive, out, labels)).returncode == 0
    refused = whole = 0
    for trial in range(trials):
        target = folder / f"r{trial}.csv"
        cmds = [cli("retag", str(folder / "t.csv.index"), "--labels", str(labels), "--out", str(target),
                    "--device", "cpu")] * 2
        procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in cmds]
        outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(rc for rc, _ in outcomes)
        refused += codes == [0, 2] and any("another process is writing" in e for _, e in outcomes)
        whole += codes[0] == 0 and len(pd.read_csv(target)) == 6 and not list(folder.glob(".r*.tmp"))
    return whole == trials, f"{trials} races: {whole} files whole, {refused} with one writer refused " \
                            "(the rest ran one after the other)"


def probe_lost_state(folder: Path) -> tuple[bool, str]:
    archive, labels = make_archive(folder, 6)
    out = folder / "t.csv"
    assert run(tag_cmd(archive, out, labels)).returncode == 0
    before = pd.read_csv(out)
    (folder / "t.csv.index" / "state.json").unlink()
    refused = run(tag_cmd(archive, out, labels))
    repaired = run(cli("repair-index", str(folder / "t.csv.index")))
    again = run(tag_cmd(archive, out, labels))
    held = (refused.returncode == 2 and "repair-index" in refused.stderr and repaired.returncode == 0
            and again.returncode == 0 and "6 already done" in again.stdout and pd.read_csv(out).equals(before))
    return held, f"refused: {last_lines(refused.stderr)[-1][:80]}...; repaired, resumed: {again.stdout.strip()[:40]}"


def probe_bit_rot(folder: Path) -> tuple[bool, str]:
    archive, labels = make_archive(folder, 4)
    out = folder / "t.csv"
    assert run(tag_cmd(archive, out, labels)).returncode == 0
    index = folder / "t.csv.index"
    victim = max((index / "embeddings.lance" / "data").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x80
    victim.write_bytes(bytes(data))
    verify = run(cli("verify", str(index)))
    return verify.returncode == 1 and victim.name in verify.stdout, verify.stdout.strip().splitlines()[0][-110:]


def probe_full_disk(folder: Path) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return True, "skipped: needs root to mount a tmpfs"
    archive, labels = make_archive(folder, 40)
    mount = folder / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        full = run(tag_cmd(archive, mount / "t.csv", labels))
        verify = run(cli("verify", str(mount / "t.csv.index")))
        lines = last_lines(full.stderr)
        held = (full.returncode == 2 and len(lines) == 1 and "no space left on device" in lines[0]
                and verify.returncode == 0)
        return held, f"{lines[-1][-60:] if lines else full.stdout[-60:]}; verify: {verify.stdout.strip()[-40:]}"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def probe_server(folder: Path, requests: int) -> tuple[bool, str]:
    from fastapi.testclient import TestClient

    from pipeline.jobs.serve.app import create_app
    from pipeline.jobs.tag.index import TagIndex

    archive, labels = make_archive(folder, 4)
    assert run(tag_cmd(archive, folder / "t.csv", labels)).returncode == 0
    index = folder / "t.csv.index"
    ids = {Path(r["path"]).name: r["video_id"] for r in
           TagIndex.open(index).table("videos").to_table(columns=["path", "video_id"]).to_pylist()}
    codes: dict[int, int] = {}
    with TestClient(create_app(index, token="probe")) as client:
        auth = {"Authorization": "bearer probe"}
        fds = len(os.listdir("/proc/self/fd"))
        media = f"/api/videos/{ids['v000.mp4']}/media"
        bad = [("GET", media, {"Range": r}) for r in ("bytes=999999999-", "bytes=abc", "bytes=5-1", "bytes=-0")]
        bad += [("GET", p, {}) for p in ("/api/videos/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                                         "/api/videos/-1/media", f"/api/videos/{2**62}/media", "/api/videos/x")]
        bad += [("HEAD", media, {})]
        for i in range(requests):
            method, path, headers = bad[i % len(bad)]
            status = client.request(method, path, headers=auth | headers).status_code
            codes[status] = codes.get(status, 0) + 1
        leaked = len(os.listdir("/proc/self/fd")) - fds
        victim = archive / "v001.mp4"
        victim.unlink()
        os.mkfifo(victim)
        with ThreadPoolExecutor(1) as pool:  # a server that blocked on it would time out here
            fifo = pool.submit(client.get, f"/api/videos/{ids['v001.mp4']}/media", headers=auth).result(timeout=20)
        fifo = fifo.status_code
    held = leaked <= 2 and not any(c >= 500 for c in codes) and fifo == 409
    return held, f"{requests} bad requests: {dict(sorted(codes.items()))}, {leaked} descriptors left; FIFO: {fifo}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=4, help="two-writer races")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--folder", type=Path, default=None, help="where to work (default: a temporary folder)")
    args = ap.parse_args()
    base = args.folder or Path(tempfile.mkdtemp(prefix="probe_archive_"))
    probes = [("kill -9", lambda f: probe_kills(f, args.kills)),
              ("compaction", lambda f: probe_compaction(f, args.readers)),
              ("two writers", lambda f: probe_two_writers(f, args.trials)),
              ("lost state", probe_lost_state), ("bit rot", probe_bit_rot), ("full disk", probe_full_disk),
              ("server", lambda f: probe_server(f, args.requests))]
    failed = 0
    print(f"{'probe':<12} {'result':<7} what it saw")
    for name, probe in probes:
        folder = base / name.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            held, seen = probe(folder)
        except Exception as e:  # a probe that breaks is a failure to report, not a crash of the table
            held, seen = False, f"{type(e).__name__}: {e}"
        failed += not held
        print(f"{name:<12} {'held' if held else 'FAILED':<7} {seen}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
