"""Our CLIP against open_clip 3.3.0 on identical random weights, loaded through every checkpoint format."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import clip_model
from clip_model.checkpoint import convert_open_clip
from clip_model.checkpoint.torchscript import read_torchscript_state_dict
from helpers import open_clip_model, open_clip_odd_heads, ours_from_open_clip, randomize_

TOL = 1e-4
PROMPTS = ["a photo of a person doing a cartwheel.", "a video of someone playing the cello", "x", "",
           "an extremely long description " * 3]
MODELS = ["tiny", "ViT-B-32", "ViT-B-16", "RN50"]


def _inputs(model: clip_model.CLIP, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = model.config.vision.image_size
    return torch.randn(n, 3, size, size, generator=g), clip_model.tokenize(PROMPTS)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    oc = open_clip_model(request.param, quick_gelu=True)
    return request.param, oc, ours_from_open_clip(oc)


@torch.no_grad()
def _assert_same_outputs(ours: clip_model.CLIP, oc, images: torch.Tensor, tokens: torch.Tensor) -> None:
    ref_img, ref_txt = oc.encode_image(images), oc.encode_text(tokens)
    assert ref_img.abs().mean() > 1e-3 and ref_txt.abs().mean() > 1e-3  # the comparison is not between zeros
    assert _max_diff(ours.encode_image(images), ref_img) <= TOL
    assert _max_diff(ours.encode_text(tokens), ref_txt) <= TOL


@pytest.mark.slow
def test_encoders_match_open_clip(pair):
    _, oc, ours = pair
    images, tokens = _inputs(ours)
    _assert_same_outputs(ours, oc, images, tokens)
    with torch.no_grad():
        logits_img, logits_txt = ours(images, tokens)
        ref_img, ref_txt, scale = oc(images, tokens)
    expected = scale * ref_img @ ref_txt.t() / (ref_img.norm(dim=-1, keepdim=True) @ ref_txt.norm(dim=-1, keepdim=True).t())
    assert _max_diff(logits_img, expected) <= 1e-3
    assert torch.equal(logits_txt, logits_img.t())


def test_gelu_variant_matches_open_clip():
    oc = open_clip_model("tiny", quick_gelu=False, seed=3)
    ours = ours_from_open_clip(oc, quick_gelu=False)
    _assert_same_outputs(ours, oc, *_inputs(ours))
    wrong = ours_from_open_clip(oc, quick_gelu=True)  # the activation really matters: the test can fail
    assert _max_diff(wrong.encode_text(_inputs(ours)[1]), oc.encode_text(_inputs(ours)[1])) > TOL


def _openai_state_dict(oc) -> dict[str, torch.Tensor]:
    sd = convert_open_clip(oc.state_dict())
    size = oc.visual.image_size[0] if isinstance(oc.visual.image_size, tuple) else oc.visual.image_size
    return sd | {"input_resolution": torch.tensor(size), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}


def _torchscript_archive(oc, path) -> None:
    """Trace the peer model into a TorchScript archive laid out like OpenAI's published .pt files."""
    size = oc.visual.image_size[0] if isinstance(oc.visual.image_size, tuple) else oc.visual.image_size
    for name in ("input_resolution", "context_length", "vocab_size"):
        if not hasattr(oc, name) or not isinstance(getattr(oc, name), torch.Tensor):
            if hasattr(oc, name):
                delattr(oc, name)
            oc.register_buffer(name, torch.tensor({"input_resolution": size}.get(name, 77 if name == "context_length" else 49408)))
    example = (torch.zeros(1, 3, size, size, dtype=oc.visual.conv1.weight.dtype), clip_model.tokenize(["a"]))
    torch.jit.trace(oc, example, strict=False, check_trace=False).save(str(path))
    for name in ("input_resolution", "context_length", "vocab_size"):
        del oc._buffers[name]


# ViT-B-16's checkpoint keys are ViT-B-32's (only the patch embedding's shape differs, which
# test_build_model_reads_architecture_from_shapes reads): the formats' readers see nothing new in it
@pytest.mark.slow
@pytest.mark.parametrize("pair", [m for m in MODELS if m != "ViT-B-16"], indirect=True)
def test_every_format_loads_the_same_weights(pair, tmp_path):
    name, oc, ours = pair
    images, tokens = _inputs(ours)
    sd = _openai_state_dict(oc)

    torch.save(sd, tmp_path / "openai_state_dict.pt")
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in oc.state_dict().items()}},
               tmp_path / "open_clip_train.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "weights.safetensors"))
    _torchscript_archive(oc, tmp_path / "archive.pt")
    clip_model.save_checkpoint(ours, tmp_path / "ours.pt")

    expected = {"openai_state_dict.pt": "pickle", "open_clip_train.pt": "pickle",
                "weights.safetensors": "safetensors", "archive.pt": "torchscript", "ours.pt": "pickle"}
    for fname, fmt in expected.items():
        assert clip_model.detect_format(tmp_path / fname) == fmt, fname
        loaded, preprocess = clip_model.load(tmp_path / fname)
        assert loaded.config == ours.config, fname
        assert preprocess.cfg.image_size == ours.config.vision.image_size
        _assert_same_outputs(loaded, oc, images, tokens)


@pytest.mark.slow
def test_torchscript_reader_equals_jit_load(tmp_path):
    """Our code-free reader returns exactly torch.jit.load(path).state_dict(), fp16 storages included."""
    oc = open_clip_model("tiny").half()
    _torchscript_archive(oc, tmp_path / "archive.pt")
    ours = read_torchscript_state_dict(tmp_path / "archive.pt")
    ref = torch.jit.load(str(tmp_path / "archive.pt"), map_location="cpu").state_dict()
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k
    assert {"input_resolution", "context_length", "vocab_size"} <= set(ours)
    model, _ = clip_model.load(tmp_path / "archive.pt")  # fp16 archive -> fp32 model
    assert model.dtype == torch.float32


def test_open_clip_hub_folder_carries_config(tmp_path):
    """open_clip's hub layout: heads, activation and preprocessing come from open_clip_config.json."""
    oc = randomize_(open_clip_odd_heads(), seed=5)
    torch.save(oc.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 48, "quick_gelu": False,
                      "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }))
    assert clip_model.detect_format(tmp_path) == "open_clip"
    model, preprocess = clip_model.load(tmp_path)
    assert (model.config.vision.heads, model.config.text.heads, model.config.quick_gelu) == (2, 2, False)
    assert preprocess.cfg.mean == (0.5, 0.5, 0.5)
    _assert_same_outputs(model, oc, *_inputs(model))


@pytest.mark.slow
def test_text_features_run_only_to_the_longest_prompt(pair):
    """Truncating each batch at its last EOT gives the full-length features (the mask is causal)."""
    _, _, ours = pair
    tokens = clip_model.tokenize(["a dog", "someone is riding a horse on a beach at sunset"])
    with torch.no_grad():
        fast = ours.encode_text(tokens)
        x = ours.token_embedding(tokens) + ours.positional_embedding  # the full 77 positions
        x = ours.ln_final(ours.transformer(x, causal=True))
        full = x[torch.arange(2), tokens.argmax(-1)] @ ours.text_projection
    assert _max_diff(fast, full) <= 1e-5


@pytest.mark.slow
def test_build_model_reads_architecture_from_shapes(pair):
    """openai/CLIP's entry point: an OpenAI state dict (with its integer bookkeeping keys) -> the same model."""
    _, oc, ours = pair
    model = clip_model.build_model(_openai_state_dict(oc))
    assert model.config == ours.config and not model.training
    _assert_same_outputs(model, oc, *_inputs(model))
