"""Config inference from shapes, for every published architecture (built on the meta device: no memory)."""
from __future__ import annotations

import pytest
import torch

import clip_model
from clip_model.config import CLIPConfig, VisionConfig


@pytest.mark.parametrize("name", list(clip_model.MODEL_CONFIGS))
def test_config_round_trips_through_state_dict_shapes(name):
    cfg = clip_model.MODEL_CONFIGS[name]
    with torch.device("meta"):
        sd = clip_model.CLIP(cfg).state_dict()
    heads = {"vision_heads": cfg.vision.heads, "text_heads": cfg.text.heads} if name.startswith("tiny") else {}
    assert clip_model.config_from_state_dict(sd, **heads) == cfg


def test_published_sizes():
    """Widths and resolutions from the CLIP paper's Table 19/20."""
    c = clip_model.MODEL_CONFIGS
    assert (c["ViT-L/14@336px"].vision.image_size, c["RN50x64"].vision.image_size, c["RN50x16"].embed_dim) == (336, 448, 768)
    with torch.device("meta"):
        n = sum(p.numel() for p in clip_model.CLIP(c["ViT-B/32"]).parameters())
    assert abs(n - 151_277_313) < 1000  # the released ViT-B/32 has 151.28 M parameters


def test_dict_round_trip_and_unknown_keys():
    cfg = clip_model.MODEL_CONFIGS["RN50"]
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown CLIPConfig keys \['bogus'\]"):
        CLIPConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=225, patch_size=32, layers=2, width=64, heads=1), r"ViT image_size \(225\) must be a positive multiple"),
    (dict(image_size=224, patch_size=None, layers=(1, 1, 1), width=64, heads=1), "4 stage counts"),
    (dict(image_size=224, patch_size=32, layers=2, width=64, heads=3), r"vision heads \(3\) must divide"),
])
def test_invalid_vision_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig(**kwargs)


def test_create_model_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="choose one of RN50"):
        clip_model.create_model("ViT-Z/1")
