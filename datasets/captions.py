"""Caption readers for text-to-video retrieval: MSR-VTT, DiDeMo, ActivityNet Captions and a generic CSV.

Each returns a ``CaptionDataset``: the videos that exist, every caption with the video it describes, and the videos
the annotations name that the disk lacks. The file layouts are the ones their sources publish (``docs/datasets.md``
gives each line by line):

- MSR-VTT (the CLIP4Clip release, ``msrvtt_data.zip``): ``MSRVTT_JSFUSION_test.csv`` for 1k-A (a caption a row),
  or a list of video ids (``MSRVTT_train.9k.csv``) whose 20 captions each come from ``MSRVTT_data.json``;
- DiDeMo (LocalizingMoments, ``test_data.json``, with the collaborative-experts split list ``test_list.txt``): a
  video's moment descriptions joined into one paragraph;
- ActivityNet Captions (``val_1.json``): a video's sentences joined into one paragraph;
- ``path,caption`` CSV for one's own videos: a row per caption, as many rows per video as it has captions.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clip_model.errors import UserError

from .formats import VIDEO_SUFFIXES, index_files
from .records import CaptionDataset, VideoRecord

CAPTION_FORMATS = ("msrvtt", "didemo", "activitynet", "captions")


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _csv_rows(path: Path, columns: set[str], what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not columns <= set(reader.fieldnames or ()):
            raise UserError(f"{path}: expected columns {','.join(sorted(columns))}; got {reader.fieldnames}")
        return list(reader)


class _Files:
    """Finds a video by the id an annotation gives: ``root/id``, ``root/id.<ext>``, or any file under ``root`` whose
    name without its last suffix is the id (one walk, made when first needed)."""

    def __init__(self, root: Path):
        self.root = root
        self._stems: dict[str, Path] | None = None

    def find(self, video_id: str) -> Path | None:
        direct = self.root / video_id
        if direct.is_file():
            return direct
        for suffix in VIDEO_SUFFIXES:
            if (self.root / f"{video_id}{suffix}").is_file():
                return self.root / f"{video_id}{suffix}"
        if self._stems is None:
            self._stems = index_files(self.root)
        return self._stems.get(video_id)


def _dataset(name: str, root: Path, captioned: Iterable[tuple[str, list[str]]]) -> CaptionDataset:
    """Videos (by annotation id, in first-seen order) with their captions -> the dataset of those that exist."""
    files = _Files(root)
    grouped: dict[str, list[str]] = {}
    for video_id, texts in captioned:
        grouped.setdefault(video_id, []).extend(t for t in texts if t)
    videos: list[VideoRecord] = []
    captions: list[str] = []
    owners: list[int] = []
    missing: list[Path] = []
    for video_id, texts in grouped.items():
        if not texts:
            raise UserError(f"{name}: video {video_id!r} has no caption")
        path = files.find(video_id)
        if path is None:
            missing.append(root / video_id)
            continue
        captions += texts
        owners += [len(videos)] * len(texts)
        videos.append(VideoRecord(path, len(videos)))
    return CaptionDataset(name, tuple(videos), tuple(captions), tuple(owners), tuple(missing))


def read_msrvtt(root: str | Path, annotations: str | Path, captions_json: str | Path | None = None) -> CaptionDataset:
    """MSR-VTT. ``annotations``: ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,sentence``: 1k-A, a caption
    a row), or a ``video_id`` list (``MSRVTT_train.9k.csv``, ``MSRVTT_train.7k.csv``) with ``captions_json``
    (``MSRVTT_data.json``) giving every caption of each listed video. Videos: ``root/<video_id>.mp4``."""
    root, annotations = Path(root), Path(annotations)
    rows = _csv_rows(annotations, {"video_id"}, "MSR-VTT CSV")
    if rows and "sentence" in rows[0]:
        return _dataset(f"msrvtt/{annotations.stem}", root, ((r["video_id"], [r["sentence"].strip()]) for r in rows))
    if captions_json is None:
        raise UserError(f"{annotations}: a list of video ids without sentences; set dataset.captions_json to "
                        "MSRVTT_data.json for their captions")
    data = _load_json(Path(captions_json), "MSRVTT_data.json")
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise UserError(f"{captions_json}: expected MSRVTT_data.json's {{'videos': [...], 'sentences': [...]}}")
    by_video: dict[str, list[str]] = {}
    for s in data["sentences"]:
        by_video.setdefault(str(s["video_id"]), []).append(str(s["caption"]).strip())
    listed = [r["video_id"] for r in rows]
    absent = [v for v in listed if v not in by_video]
    if absent:
        raise UserError(f"{captions_json}: no captions for {len(absent)} listed videos, e.g. {absent[0]}")
    return _dataset(f"msrvtt/{annotations.stem}", root, ((v, by_video[v]) for v in listed))


def read_didemo(root: str | Path, annotations: str | Path, video_list: str | Path | None = None) -> CaptionDataset:
    """DiDeMo. ``annotations``: ``test_data.json`` (a list of moments, each ``{"video": ..., "description": ...}``);
    a video's descriptions, in file order, joined into one paragraph (whole-video retrieval). ``video_list``
    (``test_list.txt``, the collaborative-experts split: a video name a line) keeps those videos, in its order."""
    root, annotations = Path(root), Path(annotations)
    moments = _load_json(annotations, "DiDeMo annotations")
    if not isinstance(moments, list) or (moments and not {"video", "description"} <= set(moments[0])):
        raise UserError(f"{annotations}: expected a list of {{'video': ..., 'description': ...}} moments")
    paragraphs: dict[str, list[str]] = {}
    for m in moments:
        paragraphs.setdefault(str(m["video"]), []).append(str(m["description"]).strip())
    order = list(paragraphs)
    if video_list is not None:
        listed = Path(video_list)
        if not listed.is_file():
            raise FileNotFoundError(f"{listed}: DiDeMo video list not found")
        order = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        absent = [v for v in order if v not in paragraphs]
        if absent:
            raise UserError(f"{listed}: {len(absent)} listed videos have no moment in {annotations}, e.g. {absent[0]}")
    return _dataset(f"didemo/{annotations.stem}", root, ((v, [" ".join(paragraphs[v])]) for v in order))


def read_activitynet(root: str | Path, annotations: str | Path) -> CaptionDataset:
    """ActivityNet Captions. ``annotations``: ``val_1.json`` (``{"v_<id>": {"duration": ..., "timestamps": [...],
    "sentences": [...]}}``); a video's sentences joined into one paragraph. Videos: ``root/v_<id>.mp4`` (or the id
    without ``v_``, as some downloads name them)."""
    root, annotations = Path(root), Path(annotations)
    data = _load_json(annotations, "ActivityNet Captions annotations")
    if not isinstance(data, dict) or any(not isinstance(v, dict) or "sentences" not in v for v in data.values()):
        raise UserError(f"{annotations}: expected {{'v_<id>': {{'sentences': [...], ...}}, ...}}")
    files = _Files(root)

    def named(video_id: str) -> str:  # the id as the file is named
        if files.find(video_id) is None and video_id.startswith("v_") and files.find(video_id[2:]) is not None:
            return video_id[2:]
        return video_id

    return _dataset(f"activitynet/{annotations.stem}", root,
                    ((named(v), [" ".join(s.strip() for s in entry["sentences"])]) for v, entry in data.items()))


def read_captions(root: str | Path, csv_file: str | Path) -> CaptionDataset:
    """Generic ``path,caption`` CSV with a header; a video with several captions has a row for each."""
    root, csv_file = Path(root), Path(csv_file)
    rows = _csv_rows(csv_file, {"path", "caption"}, "captions CSV")
    return _dataset(f"captions/{csv_file.stem}", root, ((r["path"], [r["caption"].strip()]) for r in rows))
