"""Full benchmark runs on small datasets of real encoded videos, one per annotation format, plus config errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from configs.schema import ConfigError, load_config
from datasets.labels import clean_name, raw_labels
from datasets.synthetic import moving_square_frames, write_video
from pipeline.jobs.benchmark import run_benchmark

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ["moving left", "moving right", "moving up"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Two real H.264 clips per action (32x32, 8 frames), reused by every layout below."""
    d = tmp_path_factory.mktemp("clips")
    return {(a, k): write_video(d / f"{a.replace(' ', '_')}_{k}.mp4",
                                moving_square_frames(a, "red", size=32, num_frames=8, square=8, seed=k))
            for a in ACTIONS for k in range(2)}


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def _config(tmp_path: Path, dataset: dict, **kw) -> Path:
    cfg = {"name": "t", "model": "random:tiny-vit", "device": "cpu", "num_frames": 4, "decode_workers": 1,
           "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "templates": "none",
           "dataset": dataset, **kw}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _layout_ucf101(tmp_path, clips):
    ann, root = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    names = ["MovingLeft", "MovingRight", "MovingUp"]
    ann.mkdir()
    (ann / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    for split in (1, 2):
        test = [f"{n}/v_{n}_g0{split}_c01.avi" for n in names]
        train = [f"{n}/v_{n}_g0{3 - split}_c01.avi {i + 1}" for i, n in enumerate(names)]
        (ann / f"testlist0{split}.txt").write_text("\n".join(test) + "\n")
        (ann / f"trainlist0{split}.txt").write_text("\n".join(train) + "\n")
    for a, n in zip(ACTIONS, names):
        for k in range(2):
            _link(clips[(a, k)], root / n / f"v_{n}_g0{k + 1}_c01.avi")
    return {"format": "ucf101", "root": str(root), "annotations": str(ann), "splits": [1, 2]}


def _layout_hmdb51(tmp_path, clips):
    ann, root = tmp_path / "splits", tmp_path / "hmdb51"
    ann.mkdir()
    used = dict(zip(raw_labels("hmdb51")[:3], ACTIONS))
    for cls in raw_labels("hmdb51"):
        lines = "".join(f"{cls}_{k}.avi {1 + k}\n" for k in range(2)) if cls in used else ""
        (ann / f"{cls}_test_split1.txt").write_text(lines)
    for cls, a in used.items():
        for k in range(2):
            _link(clips[(a, k)], root / cls / f"{cls}_{k}.avi")
    return {"format": "hmdb51", "root": str(root), "annotations": str(ann), "splits": [1]}


def _layout_kinetics(tmp_path, clips):
    labels = ["abseiling", "air drumming", "answering questions"]
    rows = []
    for (a, k), src in clips.items():
        yid = f"vid{ACTIONS.index(a)}{k}"
        _link(src, tmp_path / "k" / labels[ACTIONS.index(a)] / f"{yid}_000010_000020.mp4")
        rows.append(f"{labels[ACTIONS.index(a)]},{yid},10,20,validate")
    (tmp_path / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    return {"format": "kinetics", "root": str(tmp_path / "k"), "annotations": str(tmp_path / "validate.csv"),
            "subset": "validate"}


def _layout_ssv2(tmp_path, clips):
    templates = ["Moving something left", "Moving something right", "Moving something up"]
    (tmp_path / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    entries = []
    for (a, k), src in clips.items():
        vid = f"{ACTIONS.index(a)}{k}"
        _link(src, tmp_path / "ssv2" / f"{vid}.webm")
        t = templates[ACTIONS.index(a)].replace("something", "[something]")
        entries.append({"id": vid, "label": t, "template": t, "placeholders": ["a box"]})
    (tmp_path / "validation.json").write_text(json.dumps(entries))
    return {"format": "ssv2", "root": str(tmp_path / "ssv2"), "annotations": str(tmp_path / "validation.json"),
            "labels_json": str(tmp_path / "labels.json")}


def _layout_list(tmp_path, clips):
    lines = []
    for (a, k), src in clips.items():
        lines.append(f"{_link(src, tmp_path / 'l' / f'{a}_{k}.mp4').relative_to(tmp_path / 'l')} {ACTIONS.index(a)}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(ACTIONS) + "\n")
    return {"format": "list", "root": str(tmp_path / "l"), "annotations": str(tmp_path / "list.txt"),
            "classes": str(tmp_path / "classes.txt")}


def _layout_csv(tmp_path, clips):
    with open(tmp_path / "ann.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "start", "end"])
        for (a, k), src in clips.items():
            w.writerow([_link(src, tmp_path / "c" / f"{a}_{k}.mp4").name, a, "", ""])
    return {"format": "csv", "root": str(tmp_path / "c"), "annotations": str(tmp_path / "ann.csv")}


def _layout_folders(tmp_path, clips):
    for (a, k), src in clips.items():
        _link(src, tmp_path / "f" / a.replace(" ", "_") / f"{k}.mp4")
    return {"format": "folders", "root": str(tmp_path / "f")}


# what each format calls the three actions, where that is not the action itself (ucf101's MovingLeft is cleaned)
CLASS_NAMES = {"hmdb51": [clean_name(c) for c in raw_labels("hmdb51")[:3]],
               "kinetics": ["abseiling", "air drumming", "answering questions"],
               "ssv2": ["Moving something left", "Moving something right", "Moving something up"]}
LAYOUTS = {"ucf101": (_layout_ucf101, 2, 3), "hmdb51": (_layout_hmdb51, 1, 3), "kinetics": (_layout_kinetics, 1, 6),
           "ssv2": (_layout_ssv2, 1, 6), "list": (_layout_list, 1, 6), "csv": (_layout_csv, 1, 6),
           "folders": (_layout_folders, 1, 6)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_zero_shot_benchmark_on_every_format(tmp_path, clips, fmt):
    make, n_splits, per_split = LAYOUTS[fmt]
    cfg = load_config(_config(tmp_path, make(tmp_path, clips)))
    results = run_benchmark(cfg)
    out = tmp_path / "out"
    assert len(results["splits"]) == n_splits
    assert all(s["videos"] == per_split and s["failed"] == 0 for s in results["splits"])
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == n_splits * per_split
    # each row's label is the class its video shows, named as the format names it (a video is known by its bytes)
    action_of = {src.read_bytes(): a for (a, _), src in clips.items()}
    names = dict(zip(ACTIONS, CLASS_NAMES.get(fmt, ACTIONS)))
    assert [names[action_of[Path(p).read_bytes()]] for p in predictions.path] == predictions.label.tolist()
    for s in results["splits"]:
        rows = predictions[predictions.split == s["name"]]
        assert s["metrics"]["top1"] == pytest.approx((rows.label == rows.prediction).mean())  # report agrees with rows
    stored = json.loads((out / "results.json").read_text())
    assert stored["headline"]["metric"] == "top1" and stored["summary"]["top1"]["n"] == n_splits
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * n_splits and "Settings" in page


@pytest.mark.slow
def test_linear_probe_and_feature_cache(tmp_path, clips):
    cfg_path = _config(tmp_path, _layout_ucf101(tmp_path, clips), protocol="linear_probe",
                       probe_c_grid=[0.1, 10.0])
    results = run_benchmark(load_config(cfg_path))
    assert [s["train_videos"] for s in results["splits"]] == [3, 3]
    assert all((tmp_path / "out" / f"probe_split{k}.npz").is_file() for k in (1, 2))
    cached = list((tmp_path / "cache" / "video").rglob("*.pt"))
    assert len(cached) == 6  # every video decoded once, reused across the two splits and both subsets
    out = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "benchmark", "--config", str(cfg_path),
                          "--set", "dataset.splits=[2]", "--set", "decode_workers=1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "t: top1" in out.stdout and "over 1 split(s)" in out.stdout
    assert f"benchmark: {tmp_path / 'out'} holds an earlier run's reports; they are replaced" in out.stderr  # said
    # the saved probe classifies through the normal classify path, with the probe's own classes
    video = next(iter(clips.values()))
    out = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "classify", str(video), "--model",
                          "random:tiny-vit", "--probe", str(tmp_path / "out" / "probe_split1.npz"), "--format", "json",
                          "--num-frames", "4", "--device", "cpu", "--topk", "3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert sorted(row["labels"]) == ["moving left", "moving right", "moving up"]
    assert abs(sum(row["scores"]) - 1) < 1e-5


def test_missing_videos_fail_or_are_skipped_and_counted(tmp_path, clips):
    layout = _layout_csv(tmp_path, clips)
    with open(tmp_path / "ann.csv", "a", newline="") as f:
        csv.writer(f).writerow(["gone.mp4", "moving up", "", ""])
    with pytest.raises(ValueError, match=r"1 annotated videos are missing, e.g. .*gone.mp4; .*skip_missing=true"):
        run_benchmark(load_config(_config(tmp_path, layout)))
    results = run_benchmark(load_config(_config(tmp_path, {**layout, "skip_missing": True})))
    assert results["splits"][0]["skipped_missing"] == 1 and results["splits"][0]["videos"] == 6
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors.stage.tolist() == ["missing"] and errors.path.iloc[0].endswith("gone.mp4")


def test_broken_video_is_recorded_not_fatal(tmp_path, clips):
    layout = _layout_folders(tmp_path, clips)
    (tmp_path / "f" / "moving_up" / "broken.mp4").write_bytes(b"\x00\x01" * 50)
    results = run_benchmark(load_config(_config(tmp_path, layout)))
    assert results["splits"][0]["failed"] == 1 and results["splits"][0]["videos"] == 6
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors.stage.tolist() == ["decode"] and "cannot open" in errors.reason.iloc[0]


def test_kinetics600_style_class_subsets(tmp_path, clips):
    layout = _layout_kinetics(tmp_path, clips)
    (tmp_path / "sub1.csv").write_text("id,name\n0,abseiling\n1,air drumming\n")
    (tmp_path / "sub2.txt").write_text("answering questions\nair drumming\n")
    results = run_benchmark(load_config(_config(tmp_path, {**layout, "class_subsets": [str(tmp_path / "sub1.csv"),
                                                                                        str(tmp_path / "sub2.txt")]})))
    assert [(s["name"], s["videos"]) for s in results["splits"]] == [("sub1", 4), ("sub2", 4)]
    assert results["summary"]["top1"]["n"] == 2


@pytest.mark.parametrize("change, message", [
    ({"protocol": "few_shot"}, "protocol 'few_shot' is not valid; choose one of zero_shot, linear_probe"),
    ({"num_frame": 8}, "unknown key 'num_frame'; valid keys:"),
    ({"dataset": {"format": "ucf", "root": "x"}}, "dataset.format 'ucf' is not valid; choose one of ucf101"),
    ({"dataset": {"root": "x"}}, "missing required key dataset.'format'"),
    ({"num_frames": "eight"}, "num_frames must be an integer, got 'eight'"),
    ({"crops": 2}, "crops (2) must be 1 or 3"),
    ({"num_frames": 0}, "num_frames (0) must be >= 1"),
    ({"pooling": "median"}, "pooling 'median' is not valid; choose one of mean, max, temporal"),
    ({"precision": "fp64"}, "precision 'fp64' is not valid; choose one of fp32, bf16, fp16"),
    ({"decode_workers": 0}, "decode_workers (0) must be >= 1"),
    ({"runtime": {"model": "x"}}, "unknown key 'runtime'"),
    ({"dataset": {"format": "folders", "root": "x", "splits": [4]}}, "dataset.splits [4]: each must be 1, 2 or 3"),
    ({"dataset": {"format": "folders", "root": "x", "bogus": 1}}, "unknown key dataset.'bogus'"),
])
def test_config_errors_are_one_line(tmp_path, change, message):
    base = {"name": "t", "dataset": {"format": "folders", "root": "x"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**base, **change}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message.replace("'", "") in str(e.value).replace("'", ""), str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path))


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("train_"):
            continue  # training configs: tests/test_train.py
        cfg = load_config(path)
        assert cfg.name and cfg.dataset.root
    k600 = load_config(ROOT / "configs" / "kinetics600_zero_shot.yaml")
    assert len(k600.dataset.class_subsets) == 3
    with pytest.raises(ConfigError, match="--set 'model': expected key=value"):
        load_config(ROOT / "configs" / "ucf101_zero_shot.yaml", ["model"])


def test_a_config_holds_the_settings_classify_and_tag_take_and_records_them_as_written(tmp_path):
    """The YAML keeps its flat keys; the config holds one RuntimeSettings and one ProtocolOverrides, the types
    classify and tag take, and a run records it as written (what load_config reads back to the same config)."""
    from configs.schema import as_written
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    data = {"name": "t", "dataset": {"format": "folders", "root": "x", "splits": [1, 2]}, "model": "random:tiny-vit",
            "precision": "bf16", "decode_workers": 3, "templates": "none", "num_frames": 4, "pooling": "max"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, ["batch_size=7"])
    assert cfg.runtime == RuntimeSettings("random:tiny-vit", precision="bf16", batch_size=7, decode_workers=3)
    assert cfg.overrides == ProtocolOverrides("none", 4, "max")
    written = as_written(cfg)
    assert {k: written[k] for k in data if k != "dataset"} == {k: v for k, v in data.items() if k != "dataset"}
    assert written["dataset"]["splits"] == [1, 2] and written["batch_size"] == 7 and "runtime" not in written
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(json.loads(json.dumps(written))))
    assert load_config(again) == cfg
