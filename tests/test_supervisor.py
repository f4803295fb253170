"""Supervised workers: one status per task, deadlines, crash isolation, recycling; and decoding through them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from videos import h264_bframes, reference_frames
from worker_fns import behave

from pipeline.video.open import DecodeRequest, DecodeWorkers, decode_in_workers
from pipeline.video.samplers import Sampling, segment_indices
from pipeline.video.supervisor import Failure, WorkerPool

ROOT = Path(__file__).resolve().parents[1]


def _run(tasks, **kw):
    with WorkerPool(behave, **kw) as pool:
        return {o.task_id: o for o in pool.map(tasks)}, pool.restarts


@pytest.mark.slow
def test_every_task_gets_exactly_one_status():
    tasks = [("ok", 1), ("raise", 2), ("segfault", 0), ("ok", 3), ("sleep", 60), ("abort", 0), ("ok", 4)]
    start = time.monotonic()
    out, restarts = _run(tasks, num_workers=2, timeout_s=3)
    assert time.monotonic() - start < 40  # the 60 s sleeper was cut off at its deadline
    assert sorted(out) == list(range(len(tasks)))
    assert [out[i].status for i in range(len(tasks))] == ["ok", "error", "crash", "ok", "timeout", "crash", "ok"]
    assert [out[i].result for i in (0, 3, 6)] == [2, 6, 8]
    assert out[1].failure == Failure("error", "decode", "ValueError: bad value 2")  # the pool's stage: decode
    assert "killed by SIGSEGV" in out[2].failure.reason and "killed by SIGABRT" in out[5].failure.reason
    assert "no result within 3 s" in out[4].failure.reason
    assert [out[i].failure.status for i in (2, 4, 5)] == ["crash", "timeout", "crash"]
    assert all(out[i].failure is None for i in (0, 3, 6))
    assert restarts == 3  # two crashes and one kill, each replaced


def test_a_result_that_cannot_be_sent_is_the_tasks_error_and_the_worker_goes_on():
    out, restarts = _run([("unpicklable", 1), ("ok", 2)], num_workers=1, timeout_s=30)
    assert out[0].status == "error" and out[0].failure.stage == "decode" and "pickle" in out[0].failure.reason
    assert (out[1].status, out[1].result, restarts) == ("ok", 4, 0)


def test_workers_are_recycled_after_max_tasks():
    out, restarts = _run([("pid", 0)] * 6, num_workers=1, max_tasks=2)
    pids = [out[i].result for i in range(6)]
    assert len(set(pids)) == 3 and restarts == 3


def test_workers_are_recycled_over_the_memory_cap():
    out, _ = _run([("hog", 300), ("pid", 0)], num_workers=1, max_rss_mb=250)
    assert out[0].status == "ok" and out[1].result != out[0].result  # a fresh worker took the next task
    out, _ = _run([("hog", 100), ("pid", 0)], num_workers=1, max_rss_mb=250)
    assert out[1].result == out[0].result  # under the cap the worker is kept


def test_decoding_in_workers(tmp_path):
    good = h264_bframes(tmp_path / "good.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    requests = [DecodeRequest(str(good), Sampling("segments", num_frames=6)),
                DecodeRequest(str(tmp_path / "bad.mp4"), Sampling()),
                DecodeRequest(str(good), Sampling("dense", clip_len=4, frame_interval=3, num_clips=2), backend="pyav")]
    results = {r.path + r.sampling.kind: o for r, o in decode_in_workers(requests, num_workers=2, timeout_s=60)}
    ref = reference_frames(good)
    ok = results[str(good) + "segments"]
    assert ok.status == "ok"
    idx = segment_indices(60, 6)
    assert np.array_equal(ok.result.indices, idx)
    assert all(np.array_equal(ok.result.frames[k], ref[i]) for k, i in enumerate(idx))
    dense = results[str(good) + "dense"].result
    assert dense.indices.shape == (2, 4) and dense.frames.shape == (8, 96, 128, 3)
    bad = results[str(tmp_path / "bad.mp4") + "segments"]
    assert bad.status == "error" and bad.failure.stage == "open" and "cannot open" in bad.failure.reason


def test_a_crash_on_auto_is_retried_on_decord_once():
    from worker_fns import auto_segfaults

    requests = [DecodeRequest("a.mp4", Sampling()), DecodeRequest("b.mp4", Sampling(), backend="pyav")]
    out = {r.path: (r.backend, o) for r, o in decode_in_workers(requests, num_workers=1, fn=auto_segfaults)}
    assert out["a.mp4"][0] == "decord" and out["a.mp4"][1].status == "ok" and out["a.mp4"][1].result == "decord"
    assert out["b.mp4"][1].status == "ok"  # an explicit backend is not second-guessed


@pytest.mark.slow
def test_generator_tasks_stream_parts_and_the_deadline_is_on_progress():
    from worker_fns import stream

    tasks = [("steady", 6), ("stall", 5), ("raise", 4)]
    with WorkerPool(stream, num_workers=3, timeout_s=1.5) as pool:
        seen = list(pool.map(tasks))
    by_task = {i: [(o.status, o.result) for o in seen if o.task_id == i] for i in range(3)}
    # 6 parts 0.4 s apart take 2.4 s, longer than the 1.5 s deadline: each part restarts it
    assert by_task[0] == [("part", i) for i in range(6)] + [("ok", 6)]
    assert by_task[1][:2] == [("part", 0), ("part", 1)] and by_task[1][2][0] == "timeout" and len(by_task[1]) == 3
    assert by_task[2][:2] == [("part", 0), ("part", 1)] and by_task[2][2][0] == "error" and len(by_task[2]) == 3
    assert [o for o in seen if o.task_id == 1][-1].failure.reason.startswith("no result within 1.5 s")


def test_tasks_submitted_while_mapping_run_in_that_map_the_first_ones_next():
    with WorkerPool(behave, num_workers=1) as pool:
        order = []
        for outcome in pool.map([("ok", 1), ("ok", 2), ("ok", 3)]):
            order.append((outcome.task_id, outcome.result))
            if outcome.task_id == 0:  # ids number on from the mapped tasks'; "first" jumps the queue
                assert pool.submit(("ok", 10)) == 3 and pool.submit(("ok", 20), first=True) == 4
    assert order == [(0, 2), (4, 40), (1, 4), (2, 6), (3, 20)]


def test_withdrawn_tasks_are_stopped_or_never_started_and_say_nothing():
    with WorkerPool(behave, num_workers=2, timeout_s=60) as pool:
        seen = []
        for outcome in pool.map([("sleep", 30), ("ok", 1), ("ok", 2), ("ok", 3)]):
            seen.append((outcome.task_id, outcome.status, outcome.result))
            if len(seen) == 1:
                pool.withdraw(lambda t: t not in {("sleep", 30), ("ok", 2)})  # one running, one waiting
        assert pool.restarts == 1  # the sleeper's worker, replaced
    assert seen == [(1, "ok", 2), (3, "ok", 6)]  # the sleeper never woke; ("ok", 2) never ran


def test_tasks_submitted_next_run_ahead_of_waiting_requests_in_the_order_given():
    seen = []
    workers = DecodeWorkers(behave, num_workers=1)
    with workers.pool:
        for r, o in workers.run([("ok", 1), ("ok", 2)]):
            seen.append((r, o.result))
            if r[1] < 10:
                workers.submit_next([("ok", 100 + r[1]), ("ok", 200 + r[1])])
    assert seen == [(("ok", 1), 2), (("ok", 101), 202), (("ok", 201), 402), (("ok", 2), 4), (("ok", 102), 204),
                    (("ok", 202), 404)]


def test_workers_that_die_at_start_up_raise_instead_of_respawning_forever(tmp_path):
    script = tmp_path / "unguarded.py"  # the classic spawn mistake: work at module level, no __main__ guard
    script.write_text("from pipeline.video.supervisor import WorkerPool\nfrom worker_fns import behave\n"
                      "with WorkerPool(behave, num_workers=1) as pool:\n    print(list(pool.map([('ok', 1)])))\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "worker processes die before they start" in done.stderr.strip().splitlines()[-1]


def test_decode_workers_never_load_torch(tmp_path):
    """classify's and benchmark's workers (decode_request) and tag's (decode_windows) decode, sample, resize and
    return NumPy arrays without importing torch or the model library (each would cost ~0.6 GB and ~2 s a worker)."""
    from worker_fns import modules_after_decoding

    from pipeline.features.frame_geometry import FrameGeometry
    from pipeline.features.window_decode import WindowTask

    path = str(h264_bframes(tmp_path / "v.mp4", n=60, gop=12))
    tasks = [DecodeRequest(path, Sampling("segments", num_frames=4)),
             WindowTask(path, FrameGeometry(32), num_frames=4, window_s=1.0, stride_s=0.5)]
    outcomes = [o for _, o in decode_in_workers(tasks, num_workers=1, fn=modules_after_decoding)]
    assert [(o.status, o.result) for o in outcomes] == [("ok", []), ("ok", [])]
