"""Annotation readers: UCF101, HMDB51, Kinetics CSVs, Something-Something v2, mmaction lists, generic CSV, folders.

Each returns a ``VideoDataset``: records for the files that exist, the class list (natural-language names), and the
annotated files that are missing, so a run can refuse or skip them and say how many.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clip_model.errors import UserError

from .labels import clean_name, natural_name, raw_labels, shipped_labels
from .records import VideoDataset, VideoRecord

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _need(path, "annotation file").read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _dataset(name: str, classnames: Iterable[str], items: Iterable[tuple[Path, int, float | None, float | None]],
             ) -> VideoDataset:
    records: list[VideoRecord] = []
    missing: list[Path] = []
    for path, label, start, end in items:
        if path.is_file():
            records.append(VideoRecord(path, label, start, end))
        else:
            missing.append(path)
    return VideoDataset(name, tuple(classnames), tuple(records), tuple(missing))


def _check_split(split: int, subset: str) -> None:
    if split not in (1, 2, 3):
        raise UserError(f"split ({split}) must be 1, 2 or 3")
    if subset not in ("train", "test"):
        raise UserError(f"subset {subset!r}: choose 'train' or 'test'")


def read_ucf101(root: str | Path, annotations: str | Path, split: int = 1, subset: str = "test") -> VideoDataset:
    """``classInd.txt`` ("1 ApplyEyeMakeup") with ``trainlist0N.txt`` ("Class/v_x.avi 1") / ``testlist0N.txt``."""
    _check_split(split, subset)
    root, ann = Path(root), Path(annotations)
    raw = [line.split()[1] for line in _lines(ann / "classInd.txt")]
    index = {name: i for i, name in enumerate(raw)}
    items = []
    for line in _lines(ann / f"{subset}list0{split}.txt"):
        rel = line.split()[0]
        cls = rel.split("/")[0]
        if cls not in index:
            raise UserError(f"{ann / f'{subset}list0{split}.txt'}: class {cls!r} of {rel} is not in classInd.txt")
        items.append((root / rel, index[cls], None, None))
    return _dataset(f"ucf101/split{split}/{subset}", [natural_name(r, "ucf101") for r in raw], items)


def read_hmdb51(root: str | Path, annotations: str | Path, split: int = 1, subset: str = "test") -> VideoDataset:
    """``<class>_test_split<N>.txt`` files of "video.avi 0|1|2" (1 = train, 2 = test, 0 = unused)."""
    _check_split(split, subset)
    root, ann = Path(root), Path(annotations)
    raw = raw_labels("hmdb51")
    wanted = "1" if subset == "train" else "2"
    items = []
    for label, cls in enumerate(raw):
        for line in _lines(ann / f"{cls}_test_split{split}.txt"):
            video, tag = line.split()[:2]
            if tag == wanted:
                items.append((root / cls / video, label, None, None))
    return _dataset(f"hmdb51/split{split}/{subset}", [clean_name(c) for c in raw], items)


def index_files(root: Path) -> dict[str, Path]:
    """stem -> path for every video under ``root`` (one walk, so lookups are O(1) for large archives)."""
    return {p.stem: p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES}


def read_kinetics(root: str | Path, csv_path: str | Path, classes: str = "auto", subset: str | None = None,
                  ) -> VideoDataset:
    """Kinetics CSV (``label,youtube_id,time_start,time_end,split``); clips named ``{id}_{start:06d}_{end:06d}.*``
    anywhere under ``root``, or untrimmed ``{id}.*`` files read between start and end.

    ``classes``: ``kinetics400``/``600``/``700`` fixes the official label order; ``auto`` picks the shipped list
    that holds every label in the CSV, else sorted CSV labels.
    """
    root, csv_path = Path(root), _need(Path(csv_path), "Kinetics CSV")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if subset is None or r.get("split") == subset]
    if rows and not {"label", "youtube_id", "time_start", "time_end"} <= set(rows[0]):
        raise UserError(f"{csv_path}: expected columns label,youtube_id,time_start,time_end[,split]; "
                         f"got {sorted(rows[0])}")
    labels = sorted({r["label"] for r in rows})
    classnames = _kinetics_classes(classes, labels, csv_path)
    index = {name: i for i, name in enumerate(classnames)}
    files = index_files(root)
    items: list[tuple[Path, int, float | None, float | None]] = []
    for r in rows:
        start, end = int(float(r["time_start"])), int(float(r["time_end"]))
        clip = f"{r['youtube_id']}_{start:06d}_{end:06d}"
        if clip in files:
            items.append((files[clip], index[r["label"]], None, None))
        elif r["youtube_id"] in files:
            items.append((files[r["youtube_id"]], index[r["label"]], float(start), float(end)))
        else:
            items.append((root / f"{clip}.mp4", index[r["label"]], None, None))
    return _dataset(f"kinetics/{csv_path.stem}", classnames, items)


def _kinetics_classes(classes: str, labels: list[str], csv_path: Path) -> list[str]:
    if classes == "auto":
        for name in ("kinetics400", "kinetics600", "kinetics700"):
            shipped = shipped_labels(name)
            if set(labels) <= set(shipped):
                return shipped
        return labels
    shipped = shipped_labels(classes)
    unknown = sorted(set(labels) - set(shipped))
    if unknown:
        raise UserError(f"{csv_path}: labels {unknown[:3]} are not in {classes} ({len(unknown)} in all)")
    return shipped


def read_ssv2(root: str | Path, labels_json: str | Path, annotations_json: str | Path) -> VideoDataset:
    """``labels.json`` (template -> id) with ``train.json``/``validation.json``; videos are ``{id}.webm``.

    An entry's class is its template with the placeholder brackets removed ("Holding [something] next to
    [something]" -> "Holding something next to something").
    """
    root = Path(root)
    label_ids: dict[str, Any] = json.loads(_need(Path(labels_json), "labels.json").read_text(encoding="utf-8"))
    order = sorted(label_ids, key=lambda k: int(label_ids[k]))
    index = {name: int(label_ids[name]) for name in order}
    entries = json.loads(_need(Path(annotations_json), "annotations JSON").read_text(encoding="utf-8"))
    files = index_files(root)
    items = []
    for e in entries:
        template = e["template"].replace("[", "").replace("]", "")
        if template not in index:
            raise UserError(f"{annotations_json}: template {template!r} of video {e['id']} is not in {labels_json}")
        items.append((files.get(str(e["id"]), root / f"{e['id']}.webm"), index[template], None, None))
    return _dataset(f"ssv2/{Path(annotations_json).stem}", order, items)


def read_list(root: str | Path, list_file: str | Path, classnames: list[str]) -> VideoDataset:
    """mmaction list file: "relative/path.mp4 label_index" per line."""
    root, list_file = Path(root), Path(list_file)
    items = []
    for n, line in enumerate(_lines(list_file), 1):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{list_file}:{n}: expected 'path label_index', got {line!r}")
        items.append((root / parts[0], int(parts[1]), None, None))
    return _dataset(f"list/{list_file.stem}", classnames, items)


def read_csv(root: str | Path, csv_file: str | Path, classnames: list[str] | None = None) -> VideoDataset:
    """Generic CSV with a header: ``path,label[,start,end]``; label is a class name or an index into ``classnames``."""
    root, csv_file = Path(root), _need(Path(csv_file), "CSV")
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise UserError(f"{csv_file}: expected columns path,label[,start,end]; got {sorted(rows[0])}")
    if classnames is None:
        classnames = sorted({clean_name(r["label"]) for r in rows})
    index = {name: i for i, name in enumerate(classnames)}
    items = []
    for n, r in enumerate(rows, 2):
        label = r["label"].strip()
        if label.lstrip("-").isdigit():
            idx = int(label)
        elif clean_name(label) in index:
            idx = index[clean_name(label)]
        else:
            raise UserError(f"{csv_file}:{n}: label {label!r} is not one of the {len(classnames)} classes")
        start = float(r["start"]) if r.get("start") not in (None, "") else None
        end = float(r["end"]) if r.get("end") not in (None, "") else None
        items.append((root / r["path"], idx, start, end))
    return _dataset(f"csv/{csv_file.stem}", classnames, items)


def read_folders(root: str | Path) -> VideoDataset:
    """One folder per class (the folder name, cleaned, is the class name), videos inside, at any depth."""
    root = _need(Path(root), "dataset folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root}: no class folders found (expected root/<class>/<video files>)")
    items = [(p, label, None, None) for label, cls in enumerate(classes)
             for p in sorted((root / cls).rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES]
    return _dataset(f"folders/{root.name}", [clean_name(c) for c in classes], items)

