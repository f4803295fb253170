#!/usr/bin/env python3
"""How far a reader must walk through the tree to follow one `classify` and one `tag` call: the project files the
call enters, and how often it crosses from one file to another.

Each command runs twice in this process through the CLI's ``main`` (the first run imports what it needs, so the
count is of the work, not of module loading); the second is traced with ``sys.setprofile``: every Python function
call whose code lives in the project's packages (``pipeline``, ``clip_model``, ``datasets``, ``configs``), in call
order. Consecutive calls in one file are one visit; a *transition* is a step from one visited file to the next, and
*entries* counts the visits per file. Decode worker processes are not traced (their code is the video layer's).

    python benchmarks/trace_walk.py [--workdir /tmp/clip_video_walk]

Run it on two checkouts (``git worktree add /tmp/old COMMIT``; ``cd /tmp/old && python .../trace_walk.py``) to
compare a refactor's walk before and after; it needs only ``pipeline.cli.main`` and the CLI's flags.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections import Counter
from pathlib import Path

PACKAGES = ("pipeline", "clip_model", "datasets", "configs")


def trace(argv: list[str], root: Path) -> list[str]:
    """The project files, relative to ``root``, of each function call ``main(argv)`` makes, in order."""
    from pipeline.cli import main

    prefixes = tuple(str(root / p) + os.sep for p in PACKAGES)
    files: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(prefixes):
            files.append(str(Path(frame.f_code.co_filename).relative_to(root)))

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        sys.setprofile(profile)
        try:
            main(argv)
        finally:
            sys.setprofile(None)
    return files


def walk(files: list[str]) -> tuple[int, int, Counter]:
    """(files entered, transitions between files, visits per file) of a call sequence."""
    visits = [f for k, f in enumerate(files) if k == 0 or files[k - 1] != f]
    return len(set(visits)), max(len(visits) - 1, 0), Counter(visits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clip_video_walk"))
    args = parser.parse_args()
    import pipeline
    from datasets.synthetic import moving_square_frames, write_video

    root = Path(pipeline.__file__).resolve().parents[1]
    work = args.workdir
    archive = work / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    videos = [write_video(archive / f"{a.replace(' ', '_')}.mp4", moving_square_frames(a, "red", num_frames=24))
              for a in ("moving left", "moving up")]
    labels = work / "labels.txt"
    labels.write_text("moving left\nmoving up\njumping\n")
    common = ["--model", "random:tiny-vit", "--device", "cpu", "--precision", "fp32", "--decode-workers", "1"]
    commands = {
        "classify": lambda run: ["classify", str(videos[0]), "--labels", str(labels), "--format", "json", *common],
        "tag": lambda run: ["tag", str(archive), "--out", str(work / f"tags{run}.parquet"), "--labels", str(labels),
                            "--restart", *common],
    }
    print(f"code under {root}")
    for name, argv in commands.items():
        trace(argv(0), root)  # imports and caches: not counted
        entered, transitions, visits = walk(trace(argv(1), root))
        busiest = ", ".join(f"{Path(f).name} {n}" for f, n in visits.most_common(3))
        print(f"{name}: {entered} files entered, {transitions} transitions between files (most entered: {busiest})")


if __name__ == "__main__":
    main()
