"""Class lists shipped with the code, user label files, and cleaning of class names into natural language.

``shipped_labels`` gives natural-language names: UCF101's are CLIP's published cleaned names (openai/CLIP
data/prompts.md), matched to the raw names by their letters; HMDB51's are cleaned here; the Kinetics and SSv2 lists
are already natural language. ``raw_labels`` gives the lists as published by mmaction2.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from clip_model.errors import UserError

from . import DATA_DIR

RAW_FILES = {"ucf101": "ucf101", "hmdb51": "hmdb51", "kinetics400": "kinetics400", "kinetics600": "kinetics600",
             "kinetics700": "kinetics700", "ssv2": "sthv2", "sthv2": "sthv2"}
SHIPPED = tuple(RAW_FILES)


def clean_name(raw: str) -> str:
    """``ApplyEyeMakeup`` -> "apply eye makeup", ``brush_hair`` -> "brush hair"."""
    text = raw.replace("_", " ")
    text = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return " ".join(text.split()).lower()


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@lru_cache
def raw_labels(name: str) -> tuple[str, ...]:
    if name not in RAW_FILES:
        raise UserError(f"no shipped class list {name!r}; choose one of {', '.join(SHIPPED)}")
    text = (DATA_DIR / "labels" / f"{RAW_FILES[name]}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache
def clip_ucf101_names() -> dict[str, str]:
    """compact raw name -> CLIP's published cleaned UCF101 name, lower-cased ("handstandpushups" -> ...)."""
    classes = json.loads((DATA_DIR / "prompts" / "ucf101_clip.json").read_text(encoding="utf-8"))["classes"]
    return {_compact(c): c.lower() for c in classes}


def natural_name(raw: str, dataset: str | None = None) -> str:
    """The natural-language name of a raw class name; UCF101 names follow CLIP's published cleaning."""
    if dataset == "ucf101":
        return clip_ucf101_names().get(_compact(raw), clean_name(raw))
    return clean_name(raw) if dataset in (None, "hmdb51") else raw


def shipped_labels(name: str) -> list[str]:
    """Natural-language class names of a shipped list, in its published order."""
    dataset = {"sthv2": "ssv2"}.get(name, name)
    return [natural_name(r, dataset if dataset in ("ucf101", "hmdb51") else "as-is") for r in raw_labels(name)]


def load_labels(spec: str) -> list[str]:
    """Class names from a shipped list (``ucf101``, ``hmdb51``, ``kinetics400/600/700``, ``ssv2``) or a file with
    one label per line; names from a file are cleaned into natural language."""
    if spec in RAW_FILES:
        return shipped_labels(spec)
    path = Path(spec)
    if not path.exists() or path.is_dir():  # a pipe (--labels <(...)) is no regular file, and is read once
        raise UserError(f"labels {spec!r}: not one of {', '.join(SHIPPED)} and no such file")
    lines = [(n, clean_name(line)) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    if not lines:
        raise UserError(f"labels {spec!r}: no labels found (expected one label per line)")
    names = [name for _, name in lines]
    check_unique_labels(names, f"{spec}: ", [n for n, _ in lines], "lines")
    return names


def check_unique_labels(names: Sequence[str], where: str = "", numbers: list[int] | None = None,
                        unit: str = "positions") -> None:
    """Refuse a label given twice (its probability would be split between the copies), naming each duplicate and
    where it stands (``numbers``: each label's line, else its position from 1)."""
    seen: dict[str, list[int]] = {}
    for name, number in zip(names, numbers or range(1, len(names) + 1)):
        seen.setdefault(name, []).append(number)
    twice = sorted((name, at) for name, at in seen.items() if len(at) > 1)
    if twice:
        listed = ", ".join(f"{name!r} ({unit} {', '.join(map(str, at))})" for name, at in twice)
        raise UserError(f"{where}duplicate labels: {listed}; give each label once")
