#!/usr/bin/env python3
"""Our CLIP encoders against open_clip's on the same weights, in the same run, on the same inputs.

Rows: images/s for ViT-B/32 and RN50 at batch 1, 8 and 32; text prompts/s for 400 real action prompts. Each row prints
ours, open_clip's and the ratio (target >= 1.0x). Also: our bf16 modes (bf16 weights, and fp32 weights under CPU
autocast) with their speed-up and cosine similarity to fp32, and achieved GFLOP/s (from torch.utils.flop_counter)
as a fraction of this machine's measured matmul peak.

    python benchmarks/bench_model.py [--device cpu|cuda] [--seconds 3] [--json out.json]
    python benchmarks/bench_model.py --families    # SigLIP B/16 and X-CLIP B/32 (8 frames) against transformers

``--families``: our SigLIP and X-CLIP against transformers' SiglipModel and XCLIPModel at the public base sizes, on
the same random weights (converted with from_hf) and inputs: SigLIP B/16 images/s and prompts/s (64 token ids
each: tokenizing is not timed), X-CLIP B/32 videos/s of 8 frames through the whole model (videos, 10 label texts
conditioned per video, logits).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import clip_model
from clip_model.checkpoint import convert_open_clip
from datasets import DATA_DIR

logging.getLogger().setLevel(logging.ERROR)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, items: int, device: torch.device, seconds: float) -> float:
    """Items per second: one warm-up call, then repeat until ``seconds`` have passed (at least 3 calls); best of 3
    windows, so a noisy neighbour on a shared machine costs less."""
    fn()
    sync(device)
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds / 3:
            fn()
            n += 1
        sync(device)
        best = max(best, n * items / (time.perf_counter() - start))
    return best


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """GFLOP/s of a large square matmul: the practical ceiling the encoders are compared with."""
    n = 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return rate(lambda: a @ b, 2 * n**3, device, seconds) / 1e9


def prompts(n: int) -> list[str]:
    k700 = json.loads((DATA_DIR / "prompts" / "kinetics700_clip.json").read_text())
    templates, classes = k700["templates"], k700["classes"]
    return [templates[i % len(templates)].format(classes[i % len(classes)]) for i in range(n)]


def models(name: str, device: torch.device) -> tuple[torch.nn.Module, clip_model.CLIP]:
    oc = open_clip.create_model(name.replace("/", "-"), force_quick_gelu=True).eval().to(device)
    sd = convert_open_clip(oc.state_dict())
    ours = clip_model.CLIP(clip_model.config_from_state_dict(sd))
    clip_model.load_state_dict_strict(ours, sd, source=name)
    return oc, ours.eval().to(device)


def family_rows(device: torch.device, seconds: float) -> list[dict]:
    """SigLIP B/16 and X-CLIP B/32 against transformers on the same weights and inputs."""
    import transformers

    from clip_model.siglip import SigLIP, SigLIPConfig
    from clip_model.siglip import from_hf as siglip_from_hf
    from clip_model.xclip import XCLIP, XCLIPConfig
    from clip_model.xclip import from_hf as xclip_from_hf

    rows = []
    torch.manual_seed(0)
    hf_cfg = transformers.SiglipConfig()  # google/siglip-base-patch16-224's sizes
    hf = transformers.SiglipModel(hf_cfg).eval().to(device)
    ours = SigLIP(SigLIPConfig.from_hf(hf_cfg.to_dict()))
    clip_model.load_state_dict_strict(ours, siglip_from_hf(hf.state_dict()), "SiglipModel")
    ours = ours.eval().to(device)
    x = torch.randn(8, 3, 224, 224, device=device)
    assert (ours.encode_image(x) - hf.get_image_features(pixel_values=x)).abs().max() < 1e-3
    rows.append({"row": "SigLIP B/16 images/s, batch 8", "ours": rate(lambda: ours.encode_image(x), 8, device, seconds),
                 "peer": rate(lambda: hf.get_image_features(pixel_values=x), 8, device, seconds)})
    ids = torch.randint(0, hf_cfg.text_config.vocab_size, (100, 64), device=device)
    rows.append({"row": "SigLIP B/16 prompts/s, batch 100", "ours": rate(lambda: ours.encode_text(ids), 100, device,
                                                                          seconds),
                 "peer": rate(lambda: hf.get_text_features(input_ids=ids), 100, device, seconds)})
    hf_x = transformers.XCLIPModel(transformers.XCLIPConfig()).eval().to(device)  # microsoft/xclip-base-patch32
    xclip = XCLIP(XCLIPConfig.from_hf(hf_x.config.to_dict()))
    clip_model.load_state_dict_strict(xclip, xclip_from_hf(hf_x.state_dict()), "XCLIPModel")
    xclip = xclip.eval().to(device)
    videos = torch.randn(2, 8, 3, 224, 224, device=device)
    labels = clip_model.tokenize(prompts(10)).to(device)
    assert (xclip(videos, labels) - hf_x(input_ids=labels, pixel_values=videos).logits_per_video).abs().max() < 1e-3
    rows.append({"row": "X-CLIP B/32 videos/s (8 frames, 2)", "ours": rate(lambda: xclip(videos, labels), 2, device,
                                                                            seconds),
                 "peer": rate(lambda: hf_x(input_ids=labels, pixel_values=videos), 2, device, seconds)})
    return rows


def report(rows: list[dict], title: str, peer: str = "open_clip") -> None:
    print(f"\n{title}")
    print(f"{'row':<34}{'ours':>12}{peer:>14}{'ratio':>9}")
    for r in rows:
        print(f"{r['row']:<34}{r['ours']:>12.1f}{r['peer']:>14.1f}{r['ours'] / r['peer']:>8.2f}x")


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--json", type=Path, help="also write all numbers here")
    parser.add_argument("--families", action="store_true", help="SigLIP and X-CLIP against transformers instead")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.families:
        rows = family_rows(device, args.seconds)
        report(rows, "throughput (items/s), same weights, same inputs", peer="transformers")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}")
    peak32 = matmul_peak(torch.float32, device, args.seconds)
    peak16 = matmul_peak(torch.bfloat16, device, args.seconds)
    print(f"matmul peak (2048²): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    results: dict = {"peak_gflops": {"fp32": peak32, "bf16": peak16}, "images": [], "text": [], "bf16": []}

    text = clip_model.tokenize(prompts(400)).to(device)
    for name in ("ViT-B/32", "RN50"):
        oc, ours = models(name, device)
        for b in map(int, args.batches.split(",")):
            x = torch.randn(b, 3, 224, 224, device=device)
            assert (ours.encode_image(x) - oc.encode_image(x)).abs().max() < 1e-3  # same computation
            r_ours = rate(lambda: ours.encode_image(x), b, device, args.seconds)
            r_peer = rate(lambda: oc.encode_image(x), b, device, args.seconds)
            gflop = flops_of(lambda: ours.encode_image(x)) / b / 1e9
            results["images"].append({"row": f"{name} images/s, batch {b}", "ours": r_ours, "peer": r_peer,
                                      "gflop_per_item": gflop, "ours_gflops": r_ours * gflop,
                                      "peer_gflops": r_peer * gflop})
        if name == "ViT-B/32":
            bs = 100
            chunks = text.split(bs)
            encode_ours = lambda: [ours.encode_text(c) for c in chunks]  # noqa: E731
            encode_peer = lambda: [oc.encode_text(c) for c in chunks]  # noqa: E731
            r_ours = rate(encode_ours, len(text), device, args.seconds)
            r_peer = rate(encode_peer, len(text), device, args.seconds)
            results["text"].append({"row": f"{name} text prompts/s (400, batch {bs})", "ours": r_ours, "peer": r_peer,
                                    "ours_gflop": flops_of(encode_ours) / len(text) / 1e9,
                                    "peer_gflop": flops_of(encode_peer) / len(text) / 1e9})
            results["bf16"] += bf16_rows(ours, device, args.seconds, args.batches)
    report(results["images"] + results["text"], "throughput (items/s), same weights, same inputs")
    for r in results["images"]:
        print(f"  {r['row']}: {r['gflop_per_item']:.2f} GFLOP/item; ours {r['ours_gflops']:.0f} GFLOP/s = "
              f"{r['ours_gflops'] / peak32:.0%} of fp32 matmul peak (open_clip {r['peer_gflops'] / peak32:.0%})")
    for r in results["text"]:
        print(f"  {r['row']}: ours {r['ours_gflop']:.3f} GFLOP/prompt vs open_clip {r['peer_gflop']:.3f} "
              "(ours runs each batch only to its longest prompt)")
    print("\nbf16 modes (ViT-B/32 image encoder), against our fp32 in the same run")
    print(f"{'mode':<34}{'images/s':>10}{'speed-up':>10}{'min cos':>10}{'of bf16 peak':>14}")
    for r in results["bf16"]:
        print(f"{r['row']:<34}{r['rate']:>10.1f}{r['speedup']:>9.2f}x{r['min_cos']:>10.5f}"
              f"{r['gflops'] / peak16:>14.0%}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def bf16_rows(model: clip_model.CLIP, device: torch.device, seconds: float, batches: str) -> list[dict]:
    rows = []
    for b in map(int, batches.split(",")):
        x = torch.randn(b, 3, 224, 224, device=device)
        ref = model.encode_image(x)
        fp32 = rate(lambda: model.encode_image(x), b, device, seconds)
        gflop = flops_of(lambda: model.encode_image(x)) / b / 1e9

        def autocast_fn():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model.encode_image(x)

        bf16_model = clip_model.CLIP(model.config).to(device)
        bf16_model.load_state_dict(model.state_dict())
        bf16_model = bf16_model.eval().to(torch.bfloat16)
        for mode, fn in (("autocast", autocast_fn), ("bf16 weights", lambda: bf16_model.encode_image(x))):
            cos = F.cosine_similarity(fn().float(), ref, dim=-1).min().item()
            r = rate(fn, b, device, seconds)
            rows.append({"row": f"{mode}, batch {b}", "rate": r, "speedup": r / fp32, "min_cos": cos,
                         "gflops": r * gflop})
    return rows


if __name__ == "__main__":
    main()
