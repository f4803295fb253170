"""What a new user trips on first (issue 23): shipped configs found by name from anywhere and inside the wheel, the
precision decision cached per host, summaries that count stored failures, help on every option."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from configs.schema import ConfigError, TrainConfig, load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository, as after a pip install
    by_name = load_config("ucf101_zero_shot")
    assert by_name == load_config("configs/ucf101_zero_shot.yaml") == load_config(str(ROOT / "configs" /
                                                                                       "ucf101_zero_shot.yaml"))
    assert load_config("train_world.yaml", cls=TrainConfig).name == load_config(
        str(ROOT / "configs" / "train_world.yaml"), cls=TrainConfig).name
    with pytest.raises(ConfigError, match=r"nope: no such config file, and no shipped config of that name \(shipped: "
                                          r"actionclip_hmdb51_zero_shot, .*ucf101_zero_shot"):
        load_config("nope")
    (tmp_path / "ucf101_zero_shot.yaml").write_text("name: mine\n")  # a file of that name here wins
    with pytest.raises(ConfigError, match=r"^ucf101_zero_shot.yaml: "):
        load_config("ucf101_zero_shot.yaml")


@pytest.mark.slow
def test_the_wheel_carries_every_shipped_config(tmp_path):
    source = tmp_path / "src"  # a copy of the tracked files: setuptools writes build/ beside the sources
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("clip_video-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"configs/{name}.yaml" for name in shipped_configs()} <= names
    assert len(shipped_configs()) >= 20


@pytest.mark.slow
def test_search_lists_a_one_window_video_once_and_says_when_nothing_matched(tmp_path):
    from tag_world import LABELS, WORLD

    from datasets.synthetic import write_video
    from datasets.world import Clip, render
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.jobs.tag.query import search
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    archive = tmp_path / "archive"
    for i, action in enumerate(LABELS):  # 1 s clips: one 4 s window each
        write_video(archive / f"v{i}.mp4", render(Clip("red", "square", action, seed=i, split="train"), WORLD),
                    fps=WORLD.fps)
    write_video(archive / "long.mp4", np.concatenate([render(Clip("blue", "circle", a, seed=9, split="train"), WORLD)
                                                      for a in LABELS * 2]), fps=WORLD.fps)  # 8 s: three windows
    settings = TagSettings(RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=1),
                           LABELS, overrides=ProtocolOverrides(templates="none"), window_s=4.0, stride_s=2.0)
    out = tmp_path / "t.csv"
    tag(settings, archive, out, progress=False)
    hits = search(Path(str(out) + ".index"), "growing", topk=50, device="cpu")
    short = [h for h in hits if h["path"] != str(archive / "long.mp4")]
    assert sorted(Path(h["path"]).name for h in short) == [f"v{i}.mp4" for i in range(4)]  # each once
    assert all(h["kind"] == "video" for h in short)
    assert sum(h["path"] == str(archive / "long.mp4") for h in hits) == 4  # the video and its three windows
    run = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "search", str(out) + ".index", "growing",
                          "--label", "no such label", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"no hits for 'growing' in {out}.index with these filters"


def test_serve_on_a_busy_port_says_so_before_it_claims_to_serve(tmp_path):
    import socket

    from pipeline.jobs.serve.app import listening_socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ValueError, match=rf"--host 127.0.0.1 --port {port}: cannot listen there: Address already "
                                             r"in use \(another server has it: pick another --port\)"):
            listening_socket("127.0.0.1", port)
    finally:
        taken.close()
    sock = listening_socket("127.0.0.1", port)  # free again: bound and listening on loopback only
    assert sock.getsockname() == ("127.0.0.1", port)
    sock.close()


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from pipeline.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    silent = [f"{name} {a.option_strings or a.dest}" for name, sub in commands.items() for a in sub._actions
              if not isinstance(a, argparse._HelpAction) and (not a.help or "Settings." in a.help)]
    assert not silent, silent
    from pipeline.jobs.demo import DemoSettings

    [steps] = [a for a in commands["demo"]._actions if "--steps" in a.option_strings]
    assert f"{DemoSettings.steps:,}" in steps.help  # the number it quotes is the demo's


@pytest.mark.slow
def test_unknown_is_an_answer_beside_the_labels_and_csv_survives_quotes(tmp_path):
    import csv
    import io
    import json

    from tag_world import WORLD

    from datasets.synthetic import write_video
    from datasets.world import Clip, render

    video = write_video(tmp_path / 'a "quoted", clip.mp4', render(Clip("red", "square", "growing", seed=0,
                                                                       split="train"), WORLD), fps=WORLD.fps)
    labels = tmp_path / "labels.txt"
    labels.write_text('say "hi", then wave\ngrowing\nblinking\n')
    base = [sys.executable, str(ROOT / "run_pipeline.py"), "classify", str(video), "--labels", str(labels),
            "--templates", "none", "--model", "random:tiny-vit", "--device", "cpu", "--precision", "fp32",
            "--decode-workers", "1", "--unknown-below", "0.99"]
    runs = {fmt: subprocess.run(base + ["--format", fmt], capture_output=True, text=True, timeout=120)
            for fmt in ("json", "csv", "table")}
    assert all(r.returncode == 0 for r in runs.values()), {f: r.stderr for f, r in runs.items()}
    answer = json.loads(runs["json"].stdout)
    assert answer["answer"] == "unknown" and "unknown" not in answer["labels"]
    assert abs(sum(answer["scores"]) - 1.0) < 1e-4  # softmax over the three labels: the sum is not inflated
    rows = list(csv.reader(io.StringIO(runs["csv"].stdout)))
    assert rows[0] == ["path", "rank", "label", "score"] and rows[1] == [str(video), "0", "unknown", ""]
    assert sorted(r[2] for r in rows[2:]) == sorted(['say "hi", then wave', "growing", "blinking"])
    assert [float(r[3]) for r in rows[2:]] == pytest.approx(answer["scores"], abs=1e-5)
    assert runs["table"].stdout.splitlines()[1].startswith("  unknown  (no label reaches --unknown-below")


@pytest.mark.slow
def test_models_lists_the_untrained_random_names():
    from clip_model import MODEL_CONFIGS

    run = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "models"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0
    [line] = [line for line in run.stdout.splitlines() if line.startswith("Untrained models")]
    assert [f"random:{name}" for name in MODEL_CONFIGS] == line.split(": ", 1)[1].split(" (")[0].split(", ")


def test_classify_reports_files_that_are_no_videos_before_any_model_loads(tmp_path, monkeypatch):
    import pipeline.jobs.classify as classify
    from pipeline.model.runtime import RuntimeSettings

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for videos that do not exist")

    monkeypatch.setattr(classify, "load_model", no_model)
    (tmp_path / "empty.mp4").write_bytes(b"")
    settings = classify.ClassifySettings(RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32"),
                                         classnames=("a", "b"))
    results = classify.classify_videos(settings, [tmp_path / "gone.mp4", tmp_path / "empty.mp4"])
    assert [(r.path.name, r.error) for r in results] == [("gone.mp4", "no such file"),
                                                         ("empty.mp4", "empty file (0 bytes)")]


def test_long_work_prints_progress_lines_in_a_log(monkeypatch, capsys):
    import itertools

    import pipeline.jobs.progress as progress

    clock = itertools.chain([0.0, 4.0, 11.0, 15.0, 23.0, 30.0], itertools.repeat(40.0))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.progress(100, desc="train demo", unit="step", every_s=10.0)  # stderr is captured: no terminal
    assert isinstance(bar, progress.LogLines)
    for _ in range(4):  # steps at 4, 11, 15 and 23 s: lines at 11 s (10 s after the start) and 23 s
        bar.set_postfix(loss="2.913")
        bar.update(25)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train demo: 50/100 steps (50 %), 4.55 steps/s, 0m11s left, loss 2.913",
                     "train demo: 100/100 steps (100 %), 4.35 steps/s, done in 0m23s, loss 2.913"]  # not twice
    quiet = progress.progress(5, desc="tag", unit="video", enabled=False)
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr().err == ""


_CHURN = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from pipeline.video.supervisor import keep_freed_memory
    assert keep_freed_memory()
import clip_model
from clip_model.temporal import VideoCLIP
model = VideoCLIP(clip_model.create_model("tiny-vit", seed=0), "temporal", 8)
frames, tokens = torch.randn(60, 8, 3, 32, 32), clip_model.tokenize(["a red square moving left"] * 60)
def step():  # the demo's training step: tiny CLIP, 60 clips of 8 frames
    video, text = model(frames, tokens)
    (video @ text.t()).logsumexp(-1).mean().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's; elsewhere keep_freed_memory changes nothing")
def test_freed_memory_is_kept_so_steps_do_not_page_fault_it_back():
    """By default glibc hands each freed activation back to the kernel and the next step faults it in again (the
    demo's 11.5 million page faults); the CLI keeps it. Counted in page faults, not timed."""
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _CHURN, mode], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    assert kept * 3 < default  # measured here: 55,000-87,000 against 6,000-10,000


@pytest.mark.slow
def test_a_probe_brings_its_model_and_refuses_another_in_one_line(tmp_path):
    """A probe records the model its features came from: classify uses it without --model (no download of the
    default), and refuses another model, or one of another width, in one line instead of a matmul error."""
    from datasets.synthetic import write_video
    from pipeline.eval.linear_probe import LinearProbe, fitted_on

    video = write_video(tmp_path / "clip.mp4", np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), np.uint8))
    rng = np.random.default_rng(1)
    probe = LinearProbe(("left", "right"), rng.normal(size=(2, 64)), np.zeros(2), 1.0,
                        fitted_on=fitted_on("random:tiny-vit", "mean", 8))
    probe.save(tmp_path / "probe.npz")
    LinearProbe(("left", "right"), rng.normal(size=(2, 32)), np.zeros(2), 1.0).save(tmp_path / "old.npz")

    def classify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "run_pipeline.py", "classify", str(video), "--precision", "fp32",
                               "--decode-workers", "1", *args], cwd=ROOT, capture_output=True, text=True,
                              env={"CLIP_VIDEO_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})

    own = classify("--probe", str(tmp_path / "probe.npz"))
    assert own.returncode == 0, own.stderr
    assert own.stdout.splitlines()[0] == str(video) and {line.split()[-1] for line in own.stdout.splitlines()[1:]} \
        == {"left", "right"}
    other = classify("--probe", str(tmp_path / "probe.npz"), "--model", "random:tiny-rn")
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.strip() == (f"error: {tmp_path / 'probe.npz'}: this probe was fitted on the features of "
                                    "random:tiny-vit, not of random:tiny-rn: leave --model out to use its own, or fit "
                                    "a probe on random:tiny-rn (benchmark, protocol linear_probe)")
    old = classify("--probe", str(tmp_path / "old.npz"), "--model", "random:tiny-vit")
    assert old.returncode == 2
    assert old.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'old.npz'}: this probe takes 32-dimensional features; random:tiny-vit gives 64: pass "
        "the --model it was fitted on")


def _demo_rows() -> list[list[str]]:
    """docs/benchmarks.md's table of demo runs, as cells; runs with other settings (--steps) left out."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text.split("## The demo", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return [r for r in rows[2:] if "--steps" not in r[1]]  # after the header and its rule


def test_the_readmes_demo_figures_are_the_measured_ones():
    """The README's demo accuracy ranges are the extremes of the runs docs/benchmarks.md records (date, host,
    command), and every time it quotes is a measured wall time there: no figure of its own."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = _demo_rows()
    scores = [[float(x) for x in re.findall(r"[\d.]+", r[4])] for r in rows]  # temporal, mean, probe
    claimed = re.search(r"temporal pooler \*\*([\d.]+) to\s+([\d.]+) %\*\*, with mean pooling of the same frame "
                        r"embeddings ([\d.]+) to ([\d.]+) %, a linear probe ([\d.]+) to ([\d.]+) %", readme)
    assert claimed, "the README's demo figures moved: update this test's pattern"
    for k in range(3):
        assert (float(claimed[2 * k + 1]), float(claimed[2 * k + 2])) == (min(s[k] for s in scores),
                                                                           max(s[k] for s in scores))
    timing = readme.split("and `runs/demo/results.json` (", 1)[1].split("`docs/benchmarks.md`)", 1)[0]
    walls = {int(r[2].rstrip(" s")) for r in rows}
    quoted = {int(n) for n in re.findall(r"(\d+)(?:-\d+)? s\b", timing)} | {
        int(n) for n in re.findall(r"\d+-(\d+) s\b", timing)}
    assert quoted and quoted <= walls, (quoted, walls)
