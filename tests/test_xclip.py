"""X-CLIP written here against transformers' XCLIPModel on the same random weights: video embeddings, text embeddings
after the video-specific prompts, and logits_per_video, for two patch sizes and 8 and 16 frames, through both
layouts (transformers' names, and VideoX's: OpenAI CLIP's plus message_*, mit.*, prompts_*)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import XCLIPConfig as HFXCLIPConfig
from transformers import XCLIPModel

from clip_model import CLIPConfig, VisionConfig, load_state_dict_strict
from clip_model.xclip import XCLIP, XCLIPConfig, from_hf


def _hf(patch: int, frames: int) -> XCLIPModel:
    """64-wide heads everywhere (VideoX's rule, so the VideoX layout's shapes give the same model)."""
    torch.manual_seed(patch * 100 + frames)
    text = dict(vocab_size=99, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                max_position_embeddings=16)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=patch, num_frames=frames, mit_hidden_size=64, mit_intermediate_size=256,
                  mit_num_hidden_layers=1, mit_num_attention_heads=1)
    hf = XCLIPModel(HFXCLIPConfig(text_config=text, vision_config=vision, projection_dim=64, prompt_layers=2,
                                  prompt_num_attention_heads=1)).eval()
    with torch.no_grad():  # off the initial values (alpha 0.1, zero biases, unit norms): every weight matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


def _compare(hf: XCLIPModel, ours: XCLIP, frames: int) -> None:
    video = torch.randn(3, frames, 3, 32, 32)
    ids = torch.randint(1, 97, (5, 16))
    ids[:, 0], ids[torch.arange(5), torch.tensor([3, 7, 15, 9, 5])] = 0, 98  # start token, end token (the highest id)
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=video)
        v, tokens = ours.encode_video(video)
        text = ours.condition_text(tokens, ours.encode_text(ids))
        logits = ours(video, ids)
    assert (F.normalize(v, dim=-1) - out.video_embeds).abs().max() < 1e-4
    assert (F.normalize(text, dim=-1) - out.text_embeds).abs().max() < 1e-4  # (B, K, E): per video
    assert logits.shape == (3, 5) and (logits - out.logits_per_video).abs().max() < 1e-4


@pytest.mark.parametrize("patch,frames", [(16, 8), (8, 8), (16, 16), (8, 16)])
def test_equals_transformers_through_both_layouts(patch, frames):
    hf = _hf(patch, frames)
    ours = XCLIP(XCLIPConfig.from_hf(hf.config.to_dict())).eval()
    videox = from_hf(hf.state_dict())
    load_state_dict_strict(ours, videox, "transformers XCLIPModel")
    _compare(hf, ours, frames)
    # VideoX's checkpoint: {"model": state dict} in these names; the architecture read from its shapes
    assert any(k.startswith("mit.resblocks.") for k in videox) and "prompts_generator.norm.weight" in videox
    assert "visual.transformer.resblocks.0.message_attn.in_proj_weight" in videox
    rebuilt = XCLIP(XCLIPConfig.from_state_dict(videox)).eval()
    assert rebuilt.xclip_config == ours.xclip_config
    load_state_dict_strict(rebuilt, videox, "VideoX layout")
    _compare(hf, rebuilt, frames)


def test_the_frame_count_is_the_checkpoints():
    hf = _hf(16, 8)
    ours = XCLIP(XCLIPConfig.from_hf(hf.config.to_dict())).eval()
    with pytest.raises(ValueError, match="built for 8 frames per video, got shape"):
        ours.encode_video(torch.randn(2, 16, 3, 32, 32))
    with pytest.raises(ValueError, match="not single images"):
        ours.encode_image(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs a ViT"):
        XCLIPConfig(CLIPConfig(vision=VisionConfig(layers=(1, 1, 1, 1), patch_size=None)))


def test_a_transformers_folder_and_a_videox_file_load_as_xclip(tmp_path):
    import clip_model

    hf = _hf(16, 8)
    hf.save_pretrained(tmp_path / "xclip")
    model, transform = clip_model.load(tmp_path / "xclip")
    assert isinstance(model, XCLIP) and model.family == "xclip" and model.num_frames == 8
    assert transform.cfg.mean == (0.485, 0.456, 0.406) and transform.cfg.interpolation == "bilinear"
    _compare(hf, model.eval(), 8)
    torch.save({"model": from_hf(hf.state_dict()), "epoch": 29, "max_accuracy": 80.4}, tmp_path / "k400_16_8.pth")
    videox, _ = clip_model.load(tmp_path / "k400_16_8.pth")  # VideoX's wrapper, read with weights_only
    assert isinstance(videox, XCLIP)
    _compare(hf, videox.eval(), 8)
