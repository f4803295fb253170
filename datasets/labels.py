"""Class lists shipped with the code, user label files, and cleaning of class names into natural language."""
from __future__ import annotations

import re
from pathlib import Path

from . import DATA_DIR

SHIPPED = {"ucf101": "ucf101", "hmdb51": "hmdb51", "kinetics400": "kinetics400", "kinetics600": "kinetics600",
           "kinetics700": "kinetics700", "ssv2": "sthv2", "sthv2": "sthv2"}


def clean_name(raw: str) -> str:
    """``ApplyEyeMakeup`` -> "apply eye makeup", ``brush_hair`` -> "brush hair"."""
    text = raw.replace("_", " ")
    text = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return " ".join(text.split()).lower()


def load_labels(spec: str) -> list[str]:
    """Class names from a shipped list (``ucf101``, ``hmdb51``, ``kinetics400/600/700``, ``ssv2``) or a file with
    one label per line; names are cleaned into natural language."""
    if spec in SHIPPED:
        lines = (DATA_DIR / "labels" / f"{SHIPPED[spec]}.txt").read_text(encoding="utf-8").splitlines()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"labels {spec!r}: not one of {', '.join(SHIPPED)} and no such file")
        lines = path.read_text(encoding="utf-8").splitlines()
    names = [clean_name(line) for line in lines if line.strip()]
    if not names:
        raise ValueError(f"labels {spec!r}: no labels found (expected one label per line)")
    return names
