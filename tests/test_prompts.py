"""Prompt ensembling against its definition, templates, and the on-disk text-feature cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip_model
from pipeline.model.prompts import cached_class_embeddings, class_embeddings, load_templates


@pytest.fixture(scope="module")
def model():
    return clip_model.create_model("tiny-vit", seed=0)


def test_ensemble_is_normalise_average_renormalise(model):
    names, templates = ["juggling", "rock climbing"], ["a photo of {}.", "a video of a person {}.", "{}"]
    got = class_embeddings(model, names, templates, batch_size=2)
    with torch.no_grad():
        for c, name in enumerate(names):
            each = F.normalize(model.encode_text(clip_model.tokenize([t.format(name) for t in templates])), dim=-1)
            assert torch.allclose(got[c], F.normalize(each.mean(0), dim=-1), atol=1e-6)


def test_template_sets(tmp_path):
    assert load_templates("none") == ["{}"]
    assert len(load_templates("ucf101")) == 48 and len(load_templates("kinetics700")) == 28
    (tmp_path / "t.txt").write_text("a clip of {}\n\nsomeone doing {}\n")
    assert load_templates(str(tmp_path / "t.txt")) == ["a clip of {}", "someone doing {}"]
    (tmp_path / "bad.txt").write_text("no placeholder here\n")
    with pytest.raises(ValueError, match=r"bad.txt: every template line must contain '\{\}'"):
        load_templates(str(tmp_path / "bad.txt"))


def test_cache_hits_and_keys(model, tmp_path, monkeypatch):
    names, templates = ["a", "b"], ["{}"]
    first = cached_class_embeddings(model, "m1", names, templates, tmp_path)
    assert len(list(tmp_path.glob("text_*.pt"))) == 1
    import pipeline.model.prompts as prompts

    def boom(*a, **k):
        raise AssertionError("recomputed despite a cache hit")

    monkeypatch.setattr(prompts, "class_embeddings", boom)
    assert torch.equal(cached_class_embeddings(model, "m1", names, templates, tmp_path), first)
    with pytest.raises(AssertionError, match="recomputed"):  # another model key, labels or templates: a miss
        cached_class_embeddings(model, "m2", names, templates, tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_class_embeddings(model, "m1", ["a", "c"], templates, tmp_path)


def test_damaged_cache_entry_is_recomputed_and_rewritten(model, tmp_path):
    first = cached_class_embeddings(model, "m1", ["a", "b"], ["{}"], tmp_path)
    (entry,) = tmp_path.glob("text_*.pt")
    entry.write_bytes(b"truncated")
    assert torch.allclose(cached_class_embeddings(model, "m1", ["a", "b"], ["{}"], tmp_path), first)
    assert torch.equal(torch.load(entry, weights_only=True), first)
    assert not list(tmp_path.glob("*.tmp"))
