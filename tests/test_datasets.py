"""Annotation readers on small trees written in each dataset's published layout; class-name cleaning."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from datasets.formats import read_csv, read_folders, read_hmdb51, read_kinetics, read_list, read_ssv2, read_ucf101
from datasets.labels import clean_name, load_labels, raw_labels, shipped_labels


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


@pytest.mark.parametrize("raw, clean", [("ApplyEyeMakeup", "apply eye makeup"), ("brush_hair", "brush hair"),
                                        ("YoYo", "yo yo"), ("PlayingDaf", "playing daf"), ("TaiChi", "tai chi"),
                                        ("shoot_bow", "shoot bow"), ("riding a bike", "riding a bike")])
def test_clean_name(raw, clean):
    assert clean_name(raw) == clean


def test_ucf101_names_are_clips_published_ones():
    published = json.loads((__import__("datasets").DATA_DIR / "prompts" / "ucf101_clip.json").read_text())["classes"]
    ours = shipped_labels("ucf101")
    assert sorted(ours) == sorted(c.lower() for c in published)
    assert "hand stand pushups" in ours and "apply eye makeup" in ours
    assert len(shipped_labels("kinetics700")) == 700 and shipped_labels("hmdb51")[0] == "brush hair"
    assert load_labels("ssv2")[0] == "Approaching something with your camera"


def test_ucf101_reader(tmp_path):
    ann, root = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    (ann / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g01_c01.avi 3\n")
    (ann / "testlist01.txt").write_text("HandstandPushups/v_HandstandPushups_g01_c01.avi\nYoYo/v_YoYo_g02_c01.avi\n")
    _touch(root / "HandstandPushups/v_HandstandPushups_g01_c01.avi")
    test = read_ucf101(root, ann, split=1, subset="test")
    assert test.classnames == ("apply eye makeup", "hand stand pushups", "yo yo")
    assert [(r.path.name, r.label) for r in test.records] == [("v_HandstandPushups_g01_c01.avi", 1)]
    assert [p.name for p in test.missing] == ["v_YoYo_g02_c01.avi"]
    assert [r.label for r in read_ucf101(root, ann, 1, "train").records] == []  # both train files are missing
    with pytest.raises(ValueError, match=r"split \(4\) must be 1, 2 or 3"):
        read_ucf101(root, ann, split=4)


def test_hmdb51_reader(tmp_path):
    ann, root = tmp_path / "splits", tmp_path / "hmdb51"
    ann.mkdir()
    for cls in raw_labels("hmdb51"):
        (ann / f"{cls}_test_split1.txt").write_text(f"{cls}_a.avi 1\n{cls}_b.avi 2\n{cls}_c.avi 0\n")
        _touch(root / cls / f"{cls}_a.avi")
        _touch(root / cls / f"{cls}_b.avi")
    test = read_hmdb51(root, ann, split=1, subset="test")
    assert len(test.records) == 51 and all(r.path.stem.endswith("_b") for r in test.records)
    assert test.records[1].label == 1 and test.classnames[1] == "cartwheel"
    assert len(read_hmdb51(root, ann, 1, "train").records) == 51


def test_kinetics_reader(tmp_path):
    csv_path = tmp_path / "validate.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n"
                        "abseiling,aaa,10,20,validate\nair drumming,bbb,0,10,validate\n"
                        "zumba,ccc,5,15,validate\nabseiling,ddd,3,13,train\n")
    _touch(tmp_path / "videos" / "abseiling" / "aaa_000010_000020.mp4")
    _touch(tmp_path / "videos" / "raw" / "bbb.mkv")  # an untrimmed source: read between start and end
    ds = read_kinetics(tmp_path / "videos", csv_path, subset="validate")
    assert len(ds.classnames) == 400  # every label is in Kinetics-400: its official order is used
    assert [(r.path.name, ds.classnames[r.label], r.start_s, r.end_s) for r in ds.records] == [
        ("aaa_000010_000020.mp4", "abseiling", None, None), ("bbb.mkv", "air drumming", 0.0, 10.0)]
    assert [p.name for p in ds.missing] == ["ccc_000005_000015.mp4"]
    with pytest.raises(ValueError, match=r"labels \['abseilingX'\] are not in kinetics400"):
        bad = tmp_path / "bad.csv"
        bad.write_text("label,youtube_id,time_start,time_end,split\nabseilingX,a,1,2,x\n")
        read_kinetics(tmp_path, bad, classes="kinetics400")


def test_ssv2_reader(tmp_path):
    labels = {"Holding something next to something": "1", "Approaching something with your camera": "0"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "validation.json").write_text(json.dumps([
        {"id": "101", "label": "holding a cup next to a pen", "template": "Holding [something] next to [something]",
         "placeholders": ["a cup", "a pen"]},
        {"id": "102", "label": "approaching a door with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a door"]}]))
    _touch(tmp_path / "videos" / "101.webm")
    ds = read_ssv2(tmp_path / "videos", tmp_path / "labels.json", tmp_path / "validation.json")
    assert ds.classnames == ("Approaching something with your camera", "Holding something next to something")
    assert [(r.path.name, r.label) for r in ds.records] == [("101.webm", 1)]
    assert [p.name for p in ds.missing] == ["102.webm"]


def test_list_csv_and_folder_readers(tmp_path):
    for name in ("a/x.mp4", "b/y.mp4", "b/z.avi", "b/notes.txt"):
        _touch(tmp_path / name)
    (tmp_path / "list.txt").write_text("a/x.mp4 0\nb/y.mp4 1\nb/gone.mp4 1\n")
    ds = read_list(tmp_path, tmp_path / "list.txt", ["run", "jump"])
    assert [(r.path.name, r.label) for r in ds.records] == [("x.mp4", 0), ("y.mp4", 1)] and len(ds.missing) == 1
    (tmp_path / "bad_list.txt").write_text("a/x.mp4 zero\n")
    with pytest.raises(ValueError, match=r"bad_list.txt:1: expected 'path label_index'"):
        read_list(tmp_path, tmp_path / "bad_list.txt", ["run"])
    (tmp_path / "ann.csv").write_text("path,label,start,end\na/x.mp4,Run,1.5,3\nb/y.mp4,jump,,\n")
    ds = read_csv(tmp_path, tmp_path / "ann.csv")
    assert ds.classnames == ("jump", "run")
    assert [(r.label, r.start_s, r.end_s) for r in ds.records] == [(1, 1.5, 3.0), (0, None, None)]
    ds = read_folders(tmp_path)
    assert ds.classnames == ("a", "b") and [r.path.name for r in ds.records] == ["x.mp4", "y.mp4", "z.avi"]


def test_record_labels_are_validated(tmp_path):
    (tmp_path / "list.txt").write_text("x.mp4 5\n")
    _touch(tmp_path / "x.mp4")
    with pytest.raises(ValueError, match=r"labels outside \[0, 2\)"):
        read_list(tmp_path, tmp_path / "list.txt", ["a", "b"])


def test_the_documented_annotation_examples_read_as_documented(tmp_path):
    """docs/datasets.md's examples, written to files and read by the readers they document."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text(encoding="utf-8")
    section = {m.group(1): m.group(2) for m in re.finditer(r"## `(\w+)`(.*?)(?=\n## |\Z)", doc, re.S)}
    blocks = {name: re.findall(r"```\n(.*?)```", text, re.S) for name, text in section.items()}

    def videos(paths):
        for rel in paths:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(b"x")

    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "classInd.txt").write_text(blocks["ucf101"][0])
    (ann / "trainlist01.txt").write_text(blocks["ucf101"][1])
    (ann / "testlist01.txt").write_text(blocks["ucf101"][2])
    videos(line.split()[0] for block in blocks["ucf101"][1:] for line in block.splitlines())
    test = read_ucf101(tmp_path, ann, 1, "test")
    assert [r.path.name for r in test.records] == ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g01_c02.avi"]
    assert test.classnames == ("apply eye makeup", "apply lipstick") and {r.label for r in test.records} == {0}

    (tmp_path / "list.txt").write_text(blocks["list"][0])
    videos(["jumping/clip_0001.mp4", "running/clip 0002.mp4"])
    listed = read_list(tmp_path, tmp_path / "list.txt", ["jumping", "running"])
    assert [(r.path.name, r.label) for r in listed.records] == [("clip_0001.mp4", 0), ("clip 0002.mp4", 1)]

    (tmp_path / "own.csv").write_text(blocks["csv"][0])
    videos(["kitchen/0001.mp4"])
    [own] = read_csv(tmp_path, tmp_path / "own.csv").records
    assert (own.start_s, own.end_s) == (12.0, 16.0)

    (tmp_path / "k.csv").write_text(blocks["kinetics"][0])
    videos(["clips/0wR5jVB-WPk_000417_000427.mp4"])
    k = read_kinetics(tmp_path, tmp_path / "k.csv")
    assert len(k.records) == 1 and k.classnames[k.records[0].label] == "abseiling"

    from datasets.captions import read_activitynet, read_captions, read_didemo, read_msrvtt

    (tmp_path / "msr.csv").write_text(blocks["msrvtt"][0])
    videos(["msr/video7020.mp4", "msr/video0.mp4"])
    assert read_msrvtt(tmp_path / "msr", tmp_path / "msr.csv").captions == ("a family is having coversation",)
    (tmp_path / "msr9k.csv").write_text(blocks["msrvtt"][1])
    (tmp_path / "data.json").write_text('{"videos": [], "sentences": [{"video_id": "video0", "caption": "a"}]}')
    assert read_msrvtt(tmp_path / "msr", tmp_path / "msr9k.csv", tmp_path / "data.json").captions == ("a",)
    (tmp_path / "didemo.json").write_text(blocks["didemo"][0])
    videos(["didemo/10015567@N08_3655084291_d8b58466fa.mov.mp4"])
    assert read_didemo(tmp_path / "didemo", tmp_path / "didemo.json").captions == ("a girl is shown she walks away",)
    (tmp_path / "val_1.json").write_text(blocks["activitynet"][0])
    videos(["anet/v_QOlSCBRmfWY.mp4"])
    assert read_activitynet(tmp_path / "anet", tmp_path / "val_1.json").captions == (
        "A young woman is seen standing in a room. She begins to dance.",)
    (tmp_path / "captions.csv").write_text(blocks["captions"][0])
    assert read_captions(tmp_path, tmp_path / "captions.csv").captions == ("someone cuts vegetables on a board",)


def test_labels_and_templates_read_from_a_pipe(tmp_path):
    """``--labels <(grep ... classes.txt)``: a shell's process substitution is a pipe, not a regular file; it is
    read like one (once). A folder is still refused in one line."""
    import argparse
    import os
    import threading

    from pipeline.model.prompts import load_templates
    from pipeline.model.runtime import ProtocolOverrides

    def piped(name: str, text: str) -> str:
        fifo = tmp_path / name
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_text(text), daemon=True)
        writer.start()
        return str(fifo)

    assert load_labels(piped("labels", "ApplyEyeMakeup\nriding a bike\n")) == ["apply eye makeup", "riding a bike"]
    assert load_templates(piped("templates", "a clip of {}\n")) == ["a clip of {}"]
    args = argparse.Namespace(templates=piped("for_tag", "a clip of {}\n{}\n"), num_frames=None, pooling=None)
    assert ProtocolOverrides.from_arguments(args).templates == ("a clip of {}", "{}")  # what tag's index records
    with pytest.raises(ValueError, match="no such file"):
        load_labels(str(tmp_path))
