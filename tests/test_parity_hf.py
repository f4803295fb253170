"""Our CLIP against transformers' CLIPModel (random init from a CLIPConfig), through the Hugging Face loader."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig as HFConfig
from transformers import CLIPModel

import clip_model
from helpers import randomize_

TOL = 1e-4


def _hf_model(act: str) -> CLIPModel:
    torch.manual_seed(0)
    cfg = HFConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act=act,
                         bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_attention_heads=3, num_hidden_layers=2,
                           image_size=64, patch_size=16, hidden_act=act),
        projection_dim=40,
    )
    return randomize_(CLIPModel(cfg).eval(), seed=2)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_folder_matches_transformers(tmp_path, act, weights):
    hf = _hf_model(act)
    hf.save_pretrained(tmp_path, safe_serialization=weights.endswith(".safetensors"))
    assert (tmp_path / weights).is_file()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = clip_model.tokenize(["a person surfing", "two dogs play tug of war in the snow", "run"])
    for path in (tmp_path, tmp_path / "config.json", tmp_path / weights):
        assert clip_model.detect_format(path) == "hf"
        model, _ = clip_model.load(path)
        assert (model.config.vision.heads, model.config.text.heads) == (3, 4)
        assert model.config.quick_gelu == (act == "quick_gelu")
        with torch.no_grad():
            ref_img = hf.get_image_features(pixel_values=images)
            ref_txt = hf.get_text_features(input_ids=tokens)
            assert (model.encode_image(images) - ref_img).abs().max() <= TOL
            assert (model.encode_text(tokens) - ref_txt).abs().max() <= TOL
            ref_logits = hf(input_ids=tokens, pixel_values=images).logits_per_image
            assert (model(images, tokens)[0] - ref_logits).abs().max() <= 1e-3


def test_hf_weights_without_config_are_refused(tmp_path):
    hf = _hf_model("quick_gelu")
    torch.save(hf.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(clip_model.CheckpointError, match="config.json"):
        clip_model.load(tmp_path / "weights.pt")
