"""The Ray engine's checks, run by tests/test_ray_engine.py in a network namespace that has only loopback (``unshare
-n``): a local Ray cluster starts, its listening sockets are read with ``ss``, the Ray pool runs tasks that succeed,
raise, hang, crash and stream, and ``tag --engine ray`` tags an archive of good and broken videos next to a local
``tag`` of the same archive. Prints one JSON object of what it saw; the test judges it.

    python tests/ray_checks.py WORKDIR
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def listening_addresses() -> list[str]:
    """The local address of every listening TCP socket in this namespace (``ss -ltnH``)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()})


def pool_outcomes() -> dict:
    from worker_fns import auto_segfaults, behave, stream

    from pipeline.video.open import DecodeRequest, decode_in_workers
    from pipeline.video.ray_pool import RayPool
    from pipeline.video.samplers import Sampling

    tasks = [("ok", 21), ("raise", 7), ("sleep", 60), ("segfault", 0), ("abort", 0), ("ok", 4)]
    start = time.monotonic()
    with RayPool(behave, timeout_s=4) as pool:
        outcomes = [(o.task_id, o.status, o.result, o.failure and [o.failure.stage, o.failure.reason])
                    for o in pool.map(tasks)]
    streamed = []
    with RayPool(stream, timeout_s=3) as pool:
        streamed = [(o.task_id, o.status, o.result) for o in pool.map([("ok", 4), ("stall", 4)])]
    retried = [(r.backend, o.status, o.result) for r, o in decode_in_workers(
        [DecodeRequest("x.mp4", Sampling())], fn=auto_segfaults, timeout_s=30, engine="ray")]
    return {"outcomes": outcomes, "streamed": streamed, "retried": retried,
            "seconds": round(time.monotonic() - start, 1)}


def archive(work: Path) -> Path:
    from datasets.synthetic import moving_square_frames, write_video

    folder = work / "archive"
    for k, (action, colour) in enumerate([("moving left", "red"), ("moving up", "blue"), ("moving right", "green")]):
        write_video(folder / f"good_{k}.mp4", moving_square_frames(action, colour, num_frames=36))
    (folder / "text.mp4").write_text("not a video\n")
    (folder / "empty.mp4").write_bytes(b"")
    whole = (folder / "good_0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    return folder


def tagged(work: Path) -> dict:
    import pandas as pd

    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    folder = archive(work)
    labels = ("moving left", "moving up", "moving right")
    runtime = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=2)
    common = dict(overrides=ProtocolOverrides(templates="none"), window_s=0.5, stride_s=0.25, topk=3, commit_every=2)
    summaries = {}
    for engine in ("local", "ray", "ray"):  # the second ray run resumes the first
        out = work / f"{engine}.csv"
        summary = tag(TagSettings(runtime, labels, engine=engine, **common), folder, out, progress=False)
        summaries.setdefault(engine, []).append(summary.line().split(";")[0])

    def rows(engine: str, what: str = "") -> tuple[list[list], list[list]]:
        """The rows, sorted, as their text columns and their scores (floats)."""
        frame = pd.read_csv(work / f"{engine}{what}.csv")
        frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        scores = [c for c in frame.columns if c.startswith("score")]
        return frame.drop(columns=scores).astype(str).values.tolist(), frame[scores].values.tolist()

    compared = {}
    for what in ("", ".segments", ".errors"):
        (text_a, score_a), (text_b, score_b) = rows("local", what), rows("ray", what)
        worst = max((abs(a - b) for ra, rb in zip(score_a, score_b) for a, b in zip(ra, rb)), default=0.0)
        compared[what or "videos"] = {"rows": len(text_b), "text_equal": text_a == text_b, "score_diff": worst}
    return {"summaries": summaries, "compared": compared, "errors": rows("ray", ".errors")[0]}


def remove_named_node(cluster, nodes: list, marker: Path):
    """Remove the node whose id a task writes to ``marker``, once it does (a thread)."""
    import threading

    def run() -> None:
        while not marker.exists() or not marker.read_text():
            time.sleep(0.05)
        cluster.remove_node(next(n for n in nodes if n.node_id == marker.read_text()), allow_graceful=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def node_loss(work: Path) -> dict:
    """A simulated cluster (a head without CPUs, two nodes of one CPU each): a node removed while the pool streams
    tasks, and while tag runs; each task and each video must end exactly once."""
    import threading

    import pandas as pd
    import ray
    from ray.cluster_utils import Cluster
    from worker_fns import stream_or_lose_node

    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
    from pipeline.video.ray_pool import RayPool

    def cluster() -> tuple[Cluster, list]:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20})
        nodes = [c.add_node(num_cpus=1, object_store_memory=100 * 2**20) for _ in range(2)]
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        c.wait_for_nodes()
        return c, nodes

    def remove_later(c: Cluster, node, seconds: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(seconds), c.remove_node(node, allow_graceful=False)))
        thread.start()
        return thread

    c, nodes = cluster()
    addresses = listening_addresses()
    marker = work / "pool.lost"
    remover = remove_named_node(c, nodes, marker)
    tasks = [(str(marker), "lose", 6)] + [(str(marker), "ok", 6)] * 3
    with RayPool(stream_or_lose_node, timeout_s=60) as pool:
        finals = [(o.task_id, o.status, o.failure and o.failure.reason) for o in pool.map(tasks)
                  if o.status != "part"]
    remover.join()
    ray.shutdown()
    c.shutdown()

    from datasets.synthetic import moving_square_frames, write_video

    folder = work / "long_archive"
    for k in range(8):
        write_video(folder / f"v{k}.mp4", moving_square_frames("moving left", "red", num_frames=96))
    c, nodes = cluster()
    runtime = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32")
    settings = TagSettings(runtime, ("moving left", "moving up"), overrides=ProtocolOverrides(templates="none"),
                           window_s=0.5, stride_s=0.25, commit_every=1, engine="ray")
    remover = remove_later(c, nodes[1], 1.5)
    first = tag(settings, folder, work / "lost.csv", progress=False).line().split(";")[0]
    remover.join()
    again = tag(settings, folder, work / "lost.csv", retry_failed=True, progress=False).line().split(";")[0]
    ray.shutdown()
    c.shutdown()
    videos, errors = pd.read_csv(work / "lost.csv"), pd.read_csv(work / "lost.errors.csv")
    return {"addresses": addresses, "pool": finals, "tag_first": first, "tag_again": again, "video_paths": sorted(videos.path.tolist()),
            "error_paths": sorted(errors.path.tolist()), "decoders": sorted(videos.decoder.tolist()),
            "split": split_video_loses_its_node(work, cluster)}


def split_video_loses_its_node(work: Path, cluster) -> dict:
    """A video cut into three time ranges whose first task loses its node after its header and first chunk (the
    node it names is removed): the video's windows equal a local decode's, and the lost task ran again as its range."""

    import ray
    import torch
    from videos import h264_bframes
    from worker_fns import windows_lose_node_once

    from pipeline.features.window_decode import FrameGeometry, WindowTask, decode_windows
    from pipeline.features.windows import embed_windows
    from pipeline.model.loading import load_model

    model = load_model("random:tiny-vit", torch.device("cpu"))
    (work / "split").mkdir()
    path = h264_bframes(work / "split" / "v.mp4", n=150, gop=12)  # 6 s: 11 windows, three ranges
    task = WindowTask(str(path), FrameGeometry.of(model.preprocess), num_frames=4, window_s=1.0, stride_s=0.5,
                      chunk_mb=0.2, split=3, min_range_s=1.0)
    [(_, local, _)] = list(embed_windows([task], model, batch_size=5, decode_workers=2, fn=decode_windows))
    c, nodes = cluster()
    remove_named_node(c, nodes, Path(str(path) + ".lost"))  # the node the first attempt waits on, once it says
    [(_, video, failure)] = list(embed_windows([task], model, batch_size=5, timeout_s=60, fn=windows_lose_node_once,
                                               engine="ray"))
    ray.shutdown()
    c.shutdown()
    return {"failure": failure and str(failure), "tasks": Path(str(path) + ".tasks").read_text().splitlines(),
            "max_diff": None if video is None else float((video.windows.vectors - local.windows.vectors).abs().max()),
            "windows": None if video is None else len(video.bounds)}


def driver_kill(work: Path) -> dict:
    """``run_pipeline.py tag --engine ray`` (its own local Ray) killed with SIGKILL once two videos are committed,
    then run again: every video once in the outputs, and the committed ones not tagged again."""
    import os
    import signal

    import pandas as pd

    folder, out = work / "long_archive", work / "killed.csv"  # node_loss wrote the 8 videos
    command = [sys.executable, "run_pipeline.py", "tag", str(folder), "--out", str(out), "--labels", "moving left",
               "--model", "random:tiny-vit", "--precision", "fp32", "--window", "0.5", "--stride", "0.25",
               "--commit-every", "1", "--engine", "ray"]
    labels = work / "labels.txt"
    labels.write_text("moving left\nmoving up\n")
    command[command.index("moving left")] = str(labels)
    state = work / "killed.csv.index" / "state.json"
    proc = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    committed, deadline = 0, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            committed = json.loads(state.read_text())["rows"].get("videos", 0)
        except (OSError, ValueError, KeyError):
            committed = 0
        if committed >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    rerun = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                           timeout=300)
    rows = pd.read_csv(out)
    return {"killed": proc.returncode, "committed_at_kill": committed, "rerun_rc": rerun.returncode,
            "rerun": rerun.stdout.strip().splitlines()[-1] if rerun.stdout.strip() else rerun.stderr[-500:],
            "paths": sorted(rows.path.tolist()), "terminated": driver_term(command, out)}


def driver_term(command: list[str], out: Path) -> dict:
    """The same job, to another output, sent SIGTERM once a video is committed: it says so in one line, as tag
    does without Ray (ray.init replaces the SIGTERM handler; connect puts tag's back)."""
    import signal

    command = [out.with_name("term.csv") if arg == str(out) else arg for arg in command]
    state = out.with_name("term.csv.index") / "state.json"
    proc = subprocess.Popen([str(a) for a in command], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["rows"].get("videos", 0) >= 1:
                proc.send_signal(signal.SIGTERM)
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    return {"rc": proc.returncode, "last": err.strip().splitlines()[-1] if err.strip() else ""}


def main() -> None:
    from pipeline.video.ray_pool import connect, import_ray

    work = Path(sys.argv[1])
    connect(num_cpus=2, object_store_memory=200 * 2**20)  # what tag's own connect does, with a small store
    report = {"addresses": listening_addresses()}
    report["pool"] = pool_outcomes()
    report["tag"] = tagged(work)
    report["addresses_after"] = listening_addresses()
    import_ray().shutdown()
    report["node_loss"] = node_loss(work)
    report["driver_kill"] = driver_kill(work)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
