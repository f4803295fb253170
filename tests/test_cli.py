"""End-to-end runs of run_pipeline.py on generated videos, and the README/CI contract."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from videos import mpeg4_avi_bframes

from clip_model.errors import UserError
from datasets.synthetic import moving_square_frames, write_video

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _stderr(out: subprocess.CompletedProcess) -> list[str]:
    """stderr's lines but the one that says which precision --precision auto chose (checked on its own below)."""
    return [line for line in out.stderr.strip().splitlines() if not line.startswith("precision: ")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("videos")
    return [write_video(d / f"{a.replace(' ', '_')}.mp4", moving_square_frames(a, "red", num_frames=12))
            for a in ("moving left", "moving up")]


@pytest.mark.slow
def test_classify_json_lines(videos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("jumping\nrunning\nswimming\n")
    out = _run("classify", *map(str, videos), "--model", "random:tiny-vit", "--labels", str(labels),
               "--format", "json", "--topk", "2", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == list(map(str, videos))
    from pipeline.model.loading import BF16_MIN_SPEEDUP, cpu_bf16

    # --precision auto, the default: fp32 without a bf16 flag; with one, bf16 exactly when the timing it states
    # reached the threshold (the CLI measures in its own process: the test checks the decision against its reason)
    said = next(line for line in out.stderr.splitlines() if line.startswith("precision: "))
    precision = said.split()[1]
    if cpu_bf16() is None:
        assert precision == "fp32" and "no native bf16" in said, said
    else:
        speedup = float(re.search(r"bf16 matmuls r(?:an|un) ([0-9.]+)x fp32's", said).group(1))
        # (printed rounded: to 0.1 for bf16, to 0.01 for fp32)
        assert precision in ("fp32", "bf16"), said
        assert speedup >= BF16_MIN_SPEEDUP - 0.05 if precision == "bf16" else speedup <= BF16_MIN_SPEEDUP + 0.005, said
    assert {r["precision"] for r in rows} == {precision}
    for r in rows:
        assert len(r["labels"]) == 2 and set(r["labels"]) <= {"jumping", "running", "swimming"}
        assert r["scores"][0] >= r["scores"][1] > 0 and sum(r["scores"]) <= 1 + 1e-6


@pytest.mark.slow
def test_bad_video_is_reported_and_others_still_classified(videos, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = _run("classify", str(bad), str(videos[0]), "--model", "random:tiny-vit", "--labels", "hmdb51",
               "--format", "json", "--device", "cpu")
    assert out.returncode == 1
    assert [json.loads(line)["path"] for line in out.stdout.splitlines()] == [str(videos[0])]
    assert _stderr(out) == [f"error: {bad}: a text file, not a video"]


@pytest.mark.slow
def test_decoder_warnings_reach_stderr_and_json(tmp_path):
    avi = mpeg4_avi_bframes(tmp_path / "bframes.avi", n=24)  # decord's frames are known to be wrong on it
    out = _run("classify", str(avi), "--model", "random:tiny-vit", "--labels", "hmdb51", "--format", "json",
               "--device", "cpu", "--backend", "decord")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert [w.split(" ", 3)[:3] for w in row["warnings"]] == [["decord", "gave", "no"], ["decord", "may", "return"]]
    assert _stderr(out) == [f"warning: {avi}: {w}" for w in row["warnings"]]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--labels", "/no/such/labels.txt"], "labels '/no/such/labels.txt': not one of ucf101"),
    (["--labels", "ucf101", "--model", "/no/such.pt"], "/no/such.pt: no such file or folder"),
    (["--labels", "ucf101", "--templates", "bogus"], "templates 'bogus': not none|video"),
    (["--labels", "ucf101", "--num-frames", "0"], "num_frames (0) must be >= 1"),
])
def test_bad_arguments_give_one_line_errors(videos, args, message):
    out = _run("classify", str(videos[0]), "--device", "cpu", *(["--model", "random:tiny-vit"] if "--model" not in args else []),
               *args)
    assert out.returncode == 2
    (line,) = _stderr(out)
    assert line.startswith("error: ") and message in line and "error: " not in line[7:]


@pytest.mark.parametrize("raised, code, last", [
    (lambda: UserError("labels x.txt: no labels found"), 2, "error: labels x.txt: no labels found"),
    (lambda: FileNotFoundError(2, "No such file or directory", "/no/such.mp4"), 2,
     "error: /no/such.mp4: No such file or directory"),
    (lambda: ImportError("the tag index needs pylance: pip install pylance"), 2,
     "error: the tag index needs pylance: pip install pylance"),
    # a bare ValueError, a KeyError: not a user's mistake but ours, wherever it comes from
    (lambda: ValueError("operands could not be broadcast"), 70, "internal error: this is a bug in clip-video"),
    (lambda: KeyError("vision.width"), 70, "internal error: this is a bug in clip-video"),
])
def test_only_user_errors_are_one_line_and_a_bug_says_it_is_one(monkeypatch, capsys, raised, code, last):
    import signal

    import pipeline.cli as cli

    def job(args):
        raise raised()

    monkeypatch.setattr(cli, "cmd_models", job)
    import torch

    handler, grad, threads = signal.getsignal(signal.SIGTERM), torch.is_grad_enabled(), torch.get_num_threads()
    try:  # main sets these for its process: given back to the test session's
        assert cli.main(["models"]) == code
    finally:
        signal.signal(signal.SIGTERM, handler)
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(last)
    if code == 2:
        assert len(lines) == 1
    else:  # the traceback names where it was raised and the exception itself
        assert lines[0] == "Traceback (most recent call last):" and "in job" in "".join(lines)
        assert lines[-2].startswith(type(raised()).__name__)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README lacks the marked test command"
    assert block.group(1).strip() in (ROOT / ".ci" / "run").read_text()


def test_the_readmes_commands_table_is_the_parsers():
    """Every command of the parser has a row, every row a command, and each option a row names is that command's."""
    import argparse

    from pipeline.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z-]+).*$", section, re.M)}
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(rows) == sorted(commands.choices)
    for name, row in rows.items():
        known = {s for action in commands.choices[name]._actions for s in action.option_strings}
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", row))
        assert named <= known, (name, named - known)


def test_every_pooling_and_precision_choice_names_the_one_list():
    """A pooling or precision option of any command offers the one list the settings validate against (tag: the
    poolings a window can take), so a value one place accepts is never refused by another."""
    import argparse

    from pipeline.cli import build_parser
    from pipeline.model.families import POOLINGS, WINDOW_POOLINGS
    from pipeline.model.runtime import PRECISION_CHOICES

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    seen = {}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest in ("pooling", "precision"):
                seen[name, action.dest] = tuple(action.choices)
    assert seen[("classify", "pooling")] == POOLINGS and seen[("tag", "pooling")] == WINDOW_POOLINGS \
        == seen[("watch", "pooling")]
    assert "frame_scores" in POOLINGS and "frame_scores" not in WINDOW_POOLINGS
    assert {v for (_, dest), v in seen.items() if dest == "precision"} == {("auto", *PRECISION_CHOICES)}
    assert {name for name, dest in seen if dest == "precision"} == {"classify", "tag", "watch"}


def test_classify_reads_its_probe_once(videos, tmp_path, monkeypatch, capsys):
    """The CLI reads the probe for the model it names and classify takes the probe it read: one file read."""
    import numpy as np

    from pipeline.cli import build_parser
    from pipeline.eval.linear_probe import LinearProbe, fitted_on

    rng = np.random.default_rng(0)
    LinearProbe(("left", "up"), rng.normal(size=(2, 64)), np.zeros(2), 1.0,
                fitted_on=fitted_on("random:tiny-vit", "mean", 8)).save(tmp_path / "probe.npz")
    reads = []
    load = LinearProbe.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(LinearProbe, "load", classmethod(lambda cls, path: reads.append(str(path)) or load(cls, path)))
    monkeypatch.setenv("CLIP_VIDEO_CACHE", str(tmp_path / "cache"))
    args = build_parser().parse_args(["classify", str(videos[0]), "--probe", str(tmp_path / "probe.npz"),
                                      "--precision", "fp32", "--decode-workers", "1", "--format", "csv"])
    assert args.func(args) == 0
    assert reads == [str(tmp_path / "probe.npz")]
    assert {line.split(",")[2] for line in capsys.readouterr().out.splitlines()[1:]} == {"left", "up"}
