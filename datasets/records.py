"""The records every annotation reader produces: one video (or a time span of one) and its label; for retrieval,
videos and the captions that describe them."""
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


@dataclass(frozen=True)
class CaptionDataset:
    """Videos and their captions, for text-to-video retrieval. A video's record ``label`` is its own position in
    ``videos``; caption ``i`` describes ``videos[caption_video[i]]``, and every video has at least one."""

    name: str
    videos: tuple[VideoRecord, ...]
    captions: tuple[str, ...]
    caption_video: tuple[int, ...]
    missing: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            raise ValueError(f"{self.name}: {len(self.captions)} captions but {len(self.caption_video)} owners")
        described = set(self.caption_video)
        if any(r.label != i for i, r in enumerate(self.videos)) or described != set(range(len(self.videos))):
            raise ValueError(f"{self.name}: each video needs its position as label and at least one caption")

    def keep(self, videos: set[int]) -> CaptionDataset:
        """The dataset of the videos at these positions only (e.g. those that decoded), renumbered in order."""
        new = {old: i for i, old in enumerate(sorted(videos))}
        kept = [i for i, v in enumerate(self.caption_video) if v in new]
        return CaptionDataset(self.name, tuple(VideoRecord(self.videos[old].path, i, self.videos[old].start_s,
                                                           self.videos[old].end_s) for old, i in new.items()),
                              tuple(self.captions[i] for i in kept), tuple(new[self.caption_video[i]] for i in kept),
                              self.missing)
