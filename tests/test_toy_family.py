"""A new family takes two registrations (issue 24): a layout that recognises its checkpoint files
(``clip_model.checkpoint.layouts.LAYOUTS``) and one protocol row (``pipeline.model.families.FAMILIES``). With just
those, a made-up per-frame family runs classify, tag, retag and search with its own protocol (4 frames, max
pooling, its own prompt), and each answer equals the same weights run as plain CLIP with that protocol spelled out
on the command line: the row, not a code path, made the difference."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tag_world import LABELS, WORLD

import clip_model
from clip_model.checkpoint import layouts
from clip_model.checkpoint.containers import Checkpoint, Source
from clip_model.checkpoint.conversions import convert_openai, infer_config
from datasets.world import write_world
from pipeline.jobs.classify import ClassifySettings, classify_videos
from pipeline.jobs.tag.job import TagSettings, tag
from pipeline.jobs.tag.query import retag, search
from pipeline.model import families
from pipeline.model.loading import load_model
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

TOY_TEMPLATE = "a toy clip of {}."
TOY = families.Family("frames", families.Templates("toy", (TOY_TEMPLATE,)), frames=4, pooling="max")


def _read_toy(source: Source) -> Checkpoint:
    sd = convert_openai(source.contents["toy_weights"])
    config = infer_config(sd, source.path)
    return Checkpoint(sd, config, clip_model.PreprocessConfig(config.vision.image_size), source.format, "")


@pytest.fixture
def toy(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the toy family's checkpoint, the same weights as a plain state dict), both registrations in place."""
    layout = layouts.Layout("toy", lambda s: isinstance(s.contents, Mapping) and "toy_weights" in s.contents,
                            _read_toy, family="toy")
    monkeypatch.setattr(layouts, "LAYOUTS", [layout, *layouts.LAYOUTS])
    monkeypatch.setitem(families.FAMILIES, "toy", TOY)
    weights = clip_model.create_model("tiny-vit", seed=3).state_dict()
    torch.save({"toy_weights": weights}, tmp_path / "toy.pt")
    torch.save(weights, tmp_path / "plain.pt")
    return tmp_path / "toy.pt", tmp_path / "plain.pt"


def _videos(tmp_path: Path, n: int) -> list[Path]:
    write_world(tmp_path / "world", WORLD)
    return sorted((tmp_path / "world" / "videos").glob("*.mp4"))[:n]


def _runtime(model: Path) -> RuntimeSettings:
    return RuntimeSettings(model=str(model), device="cpu", decode_workers=1)


def test_the_toy_family_loads_with_its_protocol(toy):
    model = load_model(str(toy[0]), torch.device("cpu"))
    assert (model.family, model.frames, model.pooling, model.templates) == ("toy", 4, "max", "toy")
    plain = load_model(str(toy[1]), torch.device("cpu"))
    assert (plain.family, plain.frames, plain.pooling, plain.templates) == ("clip", 8, "mean", "video")


@pytest.mark.slow
def test_classify_equals_plain_clip_with_the_protocol_spelled_out(toy, tmp_path):
    videos = _videos(tmp_path, 3)
    templates = tmp_path / "toy_templates.txt"
    templates.write_text(TOY_TEMPLATE + "\n")
    ours = classify_videos(ClassifySettings(_runtime(toy[0]), LABELS), videos)
    plain = classify_videos(ClassifySettings(_runtime(toy[1]), LABELS,
                                             overrides=ProtocolOverrides(str(templates), 4, "max")), videos)
    default = classify_videos(ClassifySettings(_runtime(toy[1]), LABELS), videos)
    for a, b, c in zip(ours, plain, default, strict=True):
        assert a.error is None and a.probs is not None and b.probs is not None and c.probs is not None
        torch.testing.assert_close(a.probs, b.probs, atol=1e-6, rtol=0)
        assert (a.probs - c.probs).abs().max() > 1e-4  # CLIP's own protocol gives other numbers


@pytest.mark.slow
def test_tag_retag_and_search_run_the_toy_family(toy, tmp_path):
    archive = tmp_path / "world" / "videos"
    _videos(tmp_path, 4)
    common = dict(labels=LABELS, window_s=1.0, stride_s=1.0, topk=3, commit_every=2)
    out = tmp_path / "toy.csv"
    summary = tag(TagSettings(_runtime(toy[0]), **common), archive, out, progress=False)
    assert summary.ok == len(list(archive.glob("*.mp4")))
    templates = tmp_path / "toy_templates.txt"
    templates.write_text(TOY_TEMPLATE + "\n")
    plain_out = tmp_path / "plain.csv"
    tag(TagSettings(_runtime(toy[1]), overrides=ProtocolOverrides(str(templates), 4, "max"), **common), archive,
        plain_out, progress=False)
    a, b = pd.read_csv(out).sort_values("path"), pd.read_csv(plain_out).sort_values("path")
    assert list(a["label_1"]) == list(b["label_1"])
    np.testing.assert_allclose(a[["score_1", "score_2", "score_3"]], b[["score_1", "score_2", "score_3"]],
                               atol=1e-5)

    index = Path(str(out) + ".index")
    new_labels = ("blinking", "growing", "moving left")
    redone = retag(index, new_labels, tmp_path / "retag.csv", device="cpu")  # the index's templates: "toy"
    fresh = tmp_path / "fresh.csv"
    tag(TagSettings(_runtime(toy[0]), **(common | {"labels": new_labels})), archive, fresh, progress=False)
    r, f = pd.read_csv(redone).sort_values("path"), pd.read_csv(fresh).sort_values("path")
    assert list(r["label_1"]) == list(f["label_1"])
    np.testing.assert_allclose(r[["score_1", "score_2"]], f[["score_1", "score_2"]], atol=1e-5)

    ours = search(index, "a red circle growing", topk=5, device="cpu")
    theirs = search(Path(str(plain_out) + ".index"), "a red circle growing", topk=5, device="cpu")
    assert [h["path"] for h in ours] == [h["path"] for h in theirs] and ours
    np.testing.assert_allclose([h["score"] for h in ours], [h["score"] for h in theirs], atol=1e-5)


def test_a_family_without_a_protocol_row_is_refused_in_one_line(toy, monkeypatch):
    monkeypatch.delitem(families.FAMILIES, "toy")
    with pytest.raises(ValueError, match=r"model family 'toy' has no protocol; known families: clip, siglip"):
        load_model(str(toy[0]), torch.device("cpu"))
