"""Test helpers: peer models with fully random weights, shared between test modules."""
from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import clip_model


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer non-trivial random values (peer inits zero some, e.g. ResNet bn3 weights).

    Without this, zero-initialised branches would let a wrong implementation of that branch pass parity.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or name.endswith("attn_mask"):  # keep the causal mask
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("logit_scale"):
                t.fill_(4.0)
            else:
                scale = t.std().item() if t.numel() > 1 and t.std().item() > 0 else 0.05
                t.copy_(torch.randn(t.shape, generator=g) * scale)
    return model


def _tiny_vit(width: int, head_width: int, quick_gelu: bool) -> open_clip.CLIP:
    """A 2-layer open_clip ViT at 32 px with 2 text heads of ``width // 2``."""
    return open_clip.CLIP(
        embed_dim=48,
        vision_cfg=CLIPVisionCfg(layers=2, width=width, head_width=head_width, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=width, heads=2, layers=2),
        quick_gelu=quick_gelu,
    ).eval()


def open_clip_tiny(quick_gelu: bool = True) -> open_clip.CLIP:
    """A tiny open_clip ViT with OpenAI's 64-wide heads, so every format can infer its architecture."""
    return _tiny_vit(128, 64, quick_gelu)


def open_clip_odd_heads() -> open_clip.CLIP:
    """A tiny open_clip ViT with 32-wide heads: shapes cannot reveal its head counts, only its config can."""
    return _tiny_vit(64, 32, quick_gelu=False)


def open_clip_model(name: str, quick_gelu: bool = True, seed: int = 0) -> open_clip.CLIP:
    if name == "tiny":
        model = open_clip_tiny(quick_gelu)
    else:
        model = open_clip.create_model(name, force_quick_gelu=quick_gelu).eval()
    return randomize_(model, seed)


def ours_from_open_clip(oc: open_clip.CLIP, quick_gelu: bool = True) -> clip_model.CLIP:
    sd = clip_model.checkpoint.convert_open_clip(oc.state_dict())
    heads = {}
    if hasattr(oc.visual, "transformer"):
        heads["vision_heads"] = oc.visual.transformer.resblocks[0].attn.num_heads
    heads["text_heads"] = oc.transformer.resblocks[0].attn.num_heads
    cfg = clip_model.config_from_state_dict(sd, quick_gelu=quick_gelu, **heads)
    model = clip_model.CLIP(cfg)
    clip_model.load_state_dict_strict(model, sd, source="open_clip")
    return model.eval()


def run_retrieval(tmp_path, model: str, pairs, num_frames: int | None = None):
    """The retrieval protocol over (video path, caption) pairs (a captions CSV under one folder) with ``model`` in
    fp32 on the CPU: (results, predictions.csv as a DataFrame)."""
    import csv

    import pandas as pd

    from configs.schema import load_config
    from pipeline.jobs.benchmark import run_benchmark

    root = pairs[0][0].parent
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption"), *((p.relative_to(root), c) for p, c in pairs)])
    (tmp_path / "r.yaml").write_text(
        f"name: r\nprotocol: retrieval\nmodel: {model}\nprecision: fp32\ndevice: cpu\ndecode_workers: 1\n"
        + (f"num_frames: {num_frames}\n" if num_frames else "")
        + f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\n"
        f"dataset:\n  format: captions\n  root: {root}\n  annotations: {tmp_path / 'captions.csv'}\n")
    results = run_benchmark(load_config(tmp_path / "r.yaml"))
    return results, pd.read_csv(tmp_path / "out" / "predictions.csv")


def t2v_ranks(predictions) -> dict:
    """predictions.csv's text -> video rows as {(caption, video file name): rank}."""
    from pathlib import Path

    rows = predictions[predictions.direction == "t2v"]
    return {(q, Path(p).name): int(r) for q, p, r in zip(rows["query"], rows["target"], rows["rank"])}
