"""The records every annotation reader produces: one video (or a time span of one) and its label."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clip_model.errors import UserError


@dataclass(frozen=True)
class VideoRecord:
    path: Path
    label: int  # index into the dataset's classnames
    start_s: float | None = None  # a span of the file (Kinetics-style untrimmed sources), or the whole file
    end_s: float | None = None


@dataclass(frozen=True)
class VideoDataset:
    """Records of one split plus the class list; ``missing`` lists annotated files that do not exist."""

    name: str
    classnames: tuple[str, ...]  # natural-language names, in label-index order
    records: tuple[VideoRecord, ...]
    missing: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        bad = [r for r in self.records if not 0 <= r.label < len(self.classnames)]
        if bad:
            raise UserError(f"{self.name}: {len(bad)} records have labels outside [0, {len(self.classnames)}), "
                             f"e.g. {bad[0].path} with label {bad[0].label}")
