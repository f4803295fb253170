"""The benchmark job: a validated config in, per-split metrics, mean ± std, predictions and an HTML report out.

Zero-shot scores each test video against prompt-ensembled class names; the linear probe fits on the training
split's pooled features and scores the test split. Per-view features (``model.video_text``: frame embeddings, or X-CLIP's
clip rows) are cached on disk per video (keyed by model, sampling and the file's size and mtime), so a second
protocol or split over the same videos decodes nothing.
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_model.errors import UserError
from configs.schema import BenchmarkConfig, as_written
from datasets.formats import read_csv, read_folders, read_hmdb51, read_kinetics, read_list, read_ssv2, read_ucf101
from datasets.labels import clean_name, load_labels
from datasets.records import VideoDataset
from pipeline.eval.linear_probe import DEFAULT_C_GRID, ProbeSettings, fit_probe, fitted_on
from pipeline.eval.metrics import compute_metrics, mean_std
from pipeline.model.prompts import load_templates

from .benchmark_features import ERROR_COLUMNS, check_found, failure_rows, load_benchmark_model, video_features
from .benchmark_report import confusion_png, per_class_png, write_reports
from .retrieval import run_retrieval


@dataclass(frozen=True)
class SplitData:
    name: str
    test: VideoDataset
    train: VideoDataset | None = None


def _read(cfg: BenchmarkConfig, split: int, subset: str, annotations: str | None) -> VideoDataset:
    d = cfg.dataset
    if d.format in ("ucf101", "hmdb51"):
        if d.annotations is None:
            raise UserError(f"dataset.annotations (the folder of split files) is required for format {d.format}")
        read_split = read_ucf101 if d.format == "ucf101" else read_hmdb51
        return read_split(d.root, d.annotations, split, subset)
    if d.format == "folders":
        return read_folders(annotations if subset == "train" and annotations else d.root)
    if annotations is None:
        raise UserError(f"dataset.annotations is required for format {d.format}")
    if d.format == "kinetics":
        return read_kinetics(d.root, annotations, classes=d.classes or "auto", subset=d.subset)
    if d.format == "ssv2":
        if not d.labels_json:
            raise UserError("dataset.labels_json is required for format ssv2")
        return read_ssv2(d.root, d.labels_json, annotations)
    if d.format == "list":
        if not d.classes:
            raise UserError("dataset.classes (a labels file or shipped list) is required for format list")
        return read_list(d.root, annotations, load_labels(d.classes))
    if d.format == "csv":
        return read_csv(d.root, annotations, load_labels(d.classes) if d.classes else None)
    raise AssertionError(d.format)  # the schema admits only the formats above


def load_splits(cfg: BenchmarkConfig) -> list[SplitData]:
    d = cfg.dataset
    probe = cfg.protocol == "linear_probe"
    if d.format in ("ucf101", "hmdb51"):
        splits = [SplitData(f"split{s}", _read(cfg, s, "test", None), _read(cfg, s, "train", None) if probe else None)
                  for s in d.splits]
    else:
        test = _read(cfg, 1, "test", d.annotations)
        train = _read(cfg, 1, "train", d.train_annotations) if probe else None
        splits = [SplitData(test.name, test, train)]
    if d.class_subsets:
        splits = [SplitData(Path(f).stem, restrict(s.test, _subset_names(f)), s.train)
                  for s in splits for f in d.class_subsets]
    for s in splits:
        for ds in (s.test, s.train):
            if ds is not None:
                check_found(ds.name, ds.missing, len(ds.records), d.root, d.skip_missing)
    return splits


def _subset_names(path: str) -> list[str]:
    """Class names of a subset file: a CSV with a ``name`` column (ViFi-CLIP's K600 splits) or one per line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: class subset file not found")
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return [row["name"] for row in csv.DictReader(f)]
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def restrict(ds: VideoDataset, names: list[str]) -> VideoDataset:
    """Keep the records of ``names`` only, relabelled 0..len(names)-1 (zero-shot on a class subset)."""
    position = {clean_name(n): i for i, n in enumerate(names)}
    remap = {i: position[clean_name(c)] for i, c in enumerate(ds.classnames) if clean_name(c) in position}
    unknown = sorted(set(map(clean_name, names)) - {clean_name(c) for c in ds.classnames})
    if unknown:
        raise UserError(f"{ds.name}: subset classes {unknown[:3]} are not in the dataset ({len(unknown)} in all)")
    records = tuple(dataclasses.replace(r, label=remap[r.label]) for r in ds.records if r.label in remap)
    return VideoDataset(ds.name, tuple(names), records, ds.missing)


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Run every split of the config and write the reports to ``cfg.out``; returns the results dict. Reports already
    there are replaced, and it says so on stderr first."""
    if (cfg.out / "results.json").exists():
        print(f"benchmark: {cfg.out} holds an earlier run's reports; they are replaced when this one ends "
              "(--set output_dir=... keeps them)", file=sys.stderr, flush=True)
    if cfg.protocol == "retrieval":
        return run_retrieval(cfg)
    splits = load_splits(cfg)
    rt, asked = cfg.runtime, cfg.overrides
    setup = load_benchmark_model(cfg)
    model, mkey, cache_root, sampling, cache = setup.model, setup.key, setup.cache_root, setup.sampling, setup.cache
    num_frames = model.frames
    split_results: list[dict[str, Any]] = []
    rows, error_rows, plots = [], [], []
    for split in splits:
        test_feats, test_errors = video_features(split.test.records, model, sampling, cfg, cache, f"{split.name} test")
        records = [r for r in split.test.records if r.path in test_feats]
        classnames = list(split.test.classnames)
        if cfg.protocol == "zero_shot":
            scorer = model.labels(model.class_text(classnames, load_templates(asked.templates or model.templates),
                                                   cache_root, mkey))
            probs = np.stack([model.view_probs(test_feats[r.path], scorer).numpy() for r in records])
            probe_info = {}
        else:
            assert split.train is not None  # load_splits reads a train split for the linear probe
            train_feats, train_errors = video_features(split.train.records, model, sampling, cfg, cache,
                                                       f"{split.name} train")
            test_errors |= {p: dataclasses.replace(e, reason=f"(train) {e.reason}") for p, e in train_errors.items()}
            train = [r for r in split.train.records if r.path in train_feats]
            settings = ProbeSettings(c_grid=cfg.probe_c_grid or DEFAULT_C_GRID, val_fraction=cfg.probe_val_fraction)
            probe = fit_probe(np.stack([model.probe_feature(train_feats[r.path]).numpy() for r in train]),
                              np.array([r.label for r in train]), tuple(classnames), settings)
            probe = replace(probe, fitted_on=fitted_on(rt.model, model.pooling, num_frames))
            probe.save(cfg.out / f"probe_{split.name}.npz")
            probs = probe.predict_proba(np.stack([model.probe_feature(test_feats[r.path]).numpy() for r in records]))
            probe_info = {"C": probe.C, "train_videos": len(train), "val_accuracy": probe.val_accuracy}
        labels = np.array([r.label for r in records])
        metrics = compute_metrics(probs, labels, len(classnames))
        split_summary = metrics.summary() | {"mean_top1_top5": (metrics.top1 + metrics.top5) / 2}
        correct_conf = probs.max(axis=1)[probs.argmax(axis=1) == labels]
        # open set: the top probability above which 95 % of this split's correct answers lie (--unknown-below)
        split_summary["unknown_below_keeping_95pct_correct"] = float(np.quantile(correct_conf, 0.05)) \
            if len(correct_conf) else float("nan")
        split_results.append({"name": split.name, "metrics": split_summary, "videos": len(records),
                              "skipped_missing": len(split.test.missing), "failed": len(test_errors), **probe_info})
        top5 = np.argsort(-probs, axis=1)[:, :5]
        rows += [{"split": split.name, "path": str(r.path), "label": classnames[r.label],
                  "prediction": classnames[int(t[0])], "correct": int(t[0]) == r.label,
                  "top5": "|".join(classnames[int(i)] for i in t), "probability": float(probs[k, t[0]])}
                 for k, (r, t) in enumerate(zip(records, top5))]
        error_rows += failure_rows(split.name, test_errors, split.test.missing)
        plots += [(f"{split.name}: confusion matrix (row-normalised)", confusion_png(metrics, classnames, split.name)),
                  (f"{split.name}: per-class accuracy", per_class_png(metrics, classnames, split.name))]
    keys = ("top1", "top5", "mean_class_accuracy", "mean_top1_top5")
    summary = {k: mean_std([s["metrics"][k] for s in split_results]) for k in keys}
    results = {"name": cfg.name, "config": as_written(cfg), "splits": split_results, "summary": summary,
               "headline": {"metric": cfg.headline, **summary[cfg.headline]}}
    write_reports(cfg.out, results, pd.DataFrame(rows, columns=["split", "path", "label", "prediction", "correct",
                                                                 "top5", "probability"]),
                  pd.DataFrame(error_rows, columns=ERROR_COLUMNS), plots)
    return results
