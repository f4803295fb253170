"""bf16 precision: features stay within cosine 0.999 of fp32 (ViT-B/32 and RN50 at their usual initialisation)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip_model


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_bf16_features_track_fp32(tmp_path, arch):
    path = clip_model.save_checkpoint(clip_model.create_model(arch, seed=0), tmp_path / "m.pt")
    fp32, _ = clip_model.load(path)
    bf16, _ = clip_model.load(path, precision="bf16")
    assert bf16.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 224, 224, generator=g)
    tokens = clip_model.tokenize(["a person juggling", "someone ice skating on a frozen lake", "cooking", "x"])
    with torch.no_grad():
        for a, b in ((fp32.encode_image(images), bf16.encode_image(images)),
                     (fp32.encode_text(tokens), bf16.encode_text(tokens))):
            assert b.dtype == torch.bfloat16
            assert F.cosine_similarity(a, b.float(), dim=-1).min() >= 0.999


def test_unknown_precision_lists_choices(tmp_path):
    path = clip_model.save_checkpoint(clip_model.create_model("tiny-vit", seed=0), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="choose one of fp32, bf16, fp16"):
        clip_model.load(path, precision="int4")


def test_auto_resolves_by_the_cpu_flags_and_the_gpu(monkeypatch):
    import pipeline.model_spec as spec

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert spec.resolve_precision("fp16", cpu) == ("fp16", "as asked")
    for flag, speedup, expected in (("amx_bf16", 3.1, "bf16"), ("avx512_bf16", 2.9, "bf16"),
                                    ("avx512_bf16", 0.65, "fp32"), (None, 3.0, "fp32")):
        monkeypatch.setattr(spec, "cpu_bf16", lambda flag=flag: flag)
        monkeypatch.setattr(spec, "bf16_speedup", lambda speedup=speedup: speedup)
        got, why = spec.resolve_precision("auto", cpu)
        assert got == expected and (flag or "no native bf16") in why
        assert flag is None or f"{speedup:.1f}x" in why or f"{speedup:.2f}x" in why
    for capability, expected in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16")):  # H100, A100, T4
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert spec.resolve_precision("auto", cuda)[0] == expected


def test_cpu_bf16_reads_this_machines_flags():
    import pipeline.model_spec as spec

    with open("/proc/cpuinfo") as f:  # read here independently: the first "flags" line
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    expected = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    assert spec.cpu_bf16() == expected
