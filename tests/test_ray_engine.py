"""tag --engine ray: decode tasks on a local Ray cluster, started in a network namespace that has only loopback
(``unshare -n``, as root) so that Ray can listen on nothing else, and a pid namespace that takes Ray's processes
with it; tests/ray_checks.py runs the checks there and
reports what it saw, judged here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}

@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("ray")
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "CLIP_VIDEO_CACHE": str(work / "cache")}
    # A pid namespace too: what Ray leaves after the driver's SIGKILL (its agents) ends with the namespace. The
    # network one has a second, non-loopback address (TEST-NET-1, routed nowhere but lo) that Ray's default would
    # take as the node's address and listen on: only 127.0.0.1 may show.
    proc = subprocess.run(["unshare", "-n", "--fork", "--pid", "--mount-proc", "sh", "-c",
                           "ip link set lo up && ip addr add 192.0.2.2/32 dev lo && "
                           "ip route add default dev lo src 192.0.2.2 && "
                           f'exec "{sys.executable}" '
                           f'tests/ray_checks.py "{work}"'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # Ray's raylet prints its own lines before it


@pytest.mark.slow
def test_ray_listens_on_loopback_only(report):
    assert report["addresses"], "Ray listens on no TCP socket at all: ss saw nothing"
    assert set(report["addresses"]) | set(report["addresses_after"]) | set(report["node_loss"]["addresses"]) \
        <= LOOPBACK


@pytest.mark.slow
def test_the_ray_pool_gives_each_task_one_outcome_as_the_local_pool_does(report):
    pool = report["pool"]
    final = {}
    for task_id, status, result, failure in pool["outcomes"]:
        assert task_id not in final, f"task {task_id} ended twice"
        final[task_id] = (status, result, failure)
    assert final == {
        0: ("ok", 42, None),
        1: ("error", None, ["decode", "ValueError: bad value 7"]),
        2: ("timeout", None, ["decode", "no result within 4 s; worker killed"]),  # the local pool's words
        3: ("crash", None, ["decode", "worker died while on this task (Ray: WorkerCrashedError)"]),
        4: ("crash", None, ["decode", "worker died while on this task (Ray: WorkerCrashedError)"]),
        5: ("ok", 8, None),
        6: ("error", None, ["decode", "TypeError: cannot pickle '_thread.lock' object"]),  # the local pool's words
        7: ("ok", 10, None),
    }
    streamed = {t: [(s, r) for i, s, r in pool["streamed"] if i == t] for t in (0, 1)}
    assert streamed[0] == [("part", 0), ("part", 1), ("part", 2), ("part", 3), ("ok", 4)]
    assert streamed[1] == [("part", 0), ("part", 1), ("timeout", None)]  # the deadline is on progress
    assert pool["withdrawn"] == [[1, "ok", 2], [3, "ok", 6]]  # the sleeper cancelled, ("ok", 2) never started
    assert pool["retried"] == [["decord", "ok", "decord"]]  # a crash on auto is retried on decord, as locally


@pytest.mark.slow
def test_tag_on_ray_writes_the_rows_a_local_tag_writes_and_resumes(report):
    tag = report["tag"]
    compared = tag["compared"]
    for run in ("ray", "actor"):  # the driver encodes; a Ray actor encodes
        assert [compared[f"{run} {k}"]["rows"] for k in ("videos", ".errors")] == [4, 3]
        assert compared[f"{run} .segments"]["rows"] > 36  # the generated videos' 36 and the real one's
    for what, result in compared.items():
        assert result["text_equal"], what  # paths, statuses, labels, windows, reasons
        assert result["score_diff"] <= 1e-3, what  # batches mix videos in arrival order: float noise at most
    assert sorted((path.rsplit("/", 1)[-1], stage, status) for path, stage, status, _ in tag["errors"]) == [
        ("empty.mp4", "open", "error"), ("text.mp4", "open", "error"), ("truncated.mp4", "open", "error")]
    assert tag["summaries"]["local"] == ["7 videos: 4 tagged, 0 already done, failed: 3 error"]
    assert tag["encoders"] == {"local": [], "ray": [], "actor": ["cpu"]}  # no GPU: the driver, unless asked
    assert tag["summaries"]["actor"] == ["7 videos: 4 tagged, 0 already done, failed: 3 error"]
    assert tag["summaries"]["ray"] == [
        "7 videos: 4 tagged, 0 already done, failed: 3 error",
        "7 videos: 0 tagged, 7 already done (3 of them failed: --retry-failed tries them again), failed: none"]


@pytest.mark.slow
def test_a_lost_node_loses_no_video_and_stores_none_twice(report):
    """A node removed mid-stream: its task ends once, as a crash that says so; the others finish. A split video
    whose first task loses its node after its header and first chunk: that task runs again as its own range, and
    the windows equal a local decode's."""
    lost = report["node_loss"]
    assert sorted(task_id for task_id, _, _ in lost["pool"]) == [0, 1, 2, 3]  # one final outcome each
    statuses = sorted((status, reason) for _, status, reason in lost["pool"])
    assert ("crash", "its node was lost while on this task (Ray: NodeDiedError)") in statuses
    assert [s for s, _ in statuses].count("ok") >= 2
    split = lost["split"]
    assert split["failure"] is None and split["windows"] == 11 and split["max_diff"] <= 1e-5, split
    assert sorted(split["tasks"]) == ["(0, 4) auto", "(4, 7) auto", "(7, 11) auto", "None auto"]


@pytest.mark.slow
def test_nodes_removed_at_30_60_and_90_percent_lose_nothing_and_redo_only_what_they_held(report):
    """A decode node, the other decode node, then the GPU node holding the encoder actor, removed while tag runs
    (each replaced): every video is in the outputs exactly once with a local tag's labels, decoded as it would have
    been (PyAV, not the decord retry of a crash); the frames decoded again are at most those of the tasks the
    removed nodes held (one video each: a node has one CPU); the encoder ran on the GPU node."""
    lost = report["node_loss"]["removals"]
    videos = 20
    assert [share for share, _, _ in lost["removed"]] == [0.3, 0.6, 0.9], lost["removed"]
    assert all(share * videos <= n < videos for share, n, _ in lost["removed"]), lost["removed"]  # while it ran
    assert [e.split()[0] for e in lost["encoders"]] == [lost["gpu_node"]], lost  # placed by its GPU resource
    precisions = lost["precisions"]  # --precision auto: resolved where the encoders run (a GPU node), or left as is
    assert precisions["cluster"] == precisions["here"] and precisions["driver_encodes"] == "fp32", precisions
    assert lost["first"] == f"{videos} videos: {videos} tagged, 0 already done, failed: none", lost
    assert lost["again"] == f"{videos} videos: 0 tagged, {videos} already done, failed: none", lost
    assert len(lost["video_paths"]) == len(set(lost["video_paths"])) == videos and lost["error_paths"] == []
    assert lost["decoders"] == ["pyav"] * videos and lost["labels_equal"]
    redone = lost["decoded"] - lost["decoded_local"]
    assert 0 <= redone <= 3 * lost["frames_per_video"], lost
    assert lost["score_diff"] <= 1e-3, lost


@pytest.mark.slow
def test_a_killed_driver_loses_nothing_committed_and_duplicates_nothing(report):
    """SIGKILL of `tag --engine ray` once two videos are committed, then the same command again."""
    killed = report["driver_kill"]
    assert killed["killed"] == -9 and killed["committed_at_kill"] >= 2, killed
    assert killed["rerun_rc"] == 0, killed["rerun"]
    done = int(killed["rerun"].split(" tagged, ")[1].split(" already done")[0])
    assert done >= killed["committed_at_kill"], killed["rerun"]  # what was committed is not tagged again
    assert len(killed["paths"]) == len(set(killed["paths"])) == 20
    term = killed["terminated"]  # SIGTERM: tag's own one line and exit status, as without Ray
    assert term["rc"] == 128 + 15 and term["last"].startswith("interrupted: ") and term["last"].endswith(
        "videos committed; rerun the same command to resume"), term


def test_an_address_where_no_cluster_listens_is_refused_at_once():
    """Ray would retry it for minutes, printing its own warnings; this is one line, before Ray starts."""
    import socket

    from pipeline.video.ray_pool import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"^--ray-address 127.0.0.1:{port}: no Ray cluster answers there "):
        check_reachable(f"127.0.0.1:{port}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")  # something answers: left to Ray
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen()
        check_reachable(f"[::1]:{s.getsockname()[1]}")


def test_a_ray_client_address_is_refused_in_one_line():
    """Ray Client cannot stream a task's results: said before anything starts, not after the model has loaded."""
    from clip_model.errors import UserError
    from pipeline.jobs.tag.job import TagSettings
    from pipeline.model.runtime import RuntimeSettings

    with pytest.raises(UserError, match=r"^--ray-address ray://head:10001: Ray Client \(ray://\) cannot stream"):
        TagSettings(RuntimeSettings("random:tiny-vit"), ("a",), engine="ray", ray_address="ray://head:10001")


def test_encoder_actors_are_counted_by_whole_gpus_per_node_and_leave_a_cpu_to_decode(monkeypatch):
    """ray_encoders' room, from a stand-in cluster listing (no Ray started): one actor per whole GPU of a node
    (four half GPUs make none), else per CPU less one for the decode tasks; more is refused in one line."""
    from clip_model.errors import UserError
    from pipeline.jobs.tag import job
    from pipeline.jobs.tag.job import TagSettings, ray_encoders
    from pipeline.model.runtime import RuntimeSettings

    class Cluster:
        def __init__(self, *nodes):
            self.listing = [{"Alive": True, "Resources": r} for r in nodes] + [{"Alive": False,
                                                                                 "Resources": {"GPU": 8.0}}]

        def nodes(self):
            return self.listing

    made = []
    monkeypatch.setattr(job, "RayEncoders", lambda *a, **kw: made.append(kw) or type(
        "E", (), {"placements": lambda self: ["n cpu"], "close": lambda self: None, "cpus_held": 1})())

    def run(cluster, encoders):
        monkeypatch.setattr(job, "import_ray", lambda: cluster)
        return ray_encoders(TagSettings(RuntimeSettings("random:tiny-vit"), ("a",), engine="ray", encoders=encoders),
                            job.StageCounts())

    halves = Cluster(*[{"CPU": 4.0, "GPU": 0.5}] * 4)
    assert run(halves, None) == (None, None) and made == []  # no whole GPU: the driver encodes
    run(Cluster({"CPU": 2.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}), None)
    assert made[-1] == {"count": 3, "gpus": True}
    with pytest.raises(UserError, match=r"^--encoders 2: the Ray cluster has room for 1 "):
        run(Cluster({"CPU": 1.0}, {"CPU": 1.0}), 2)  # the last CPU decodes
    run(Cluster({"CPU": 1.0}, {"CPU": 1.0}), 1)
    assert made[-1] == {"count": 1, "gpus": False}
