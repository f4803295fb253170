#!/usr/bin/env python3
"""Contrastive training throughput on this machine, against open_clip in the same run.

Rows (steps/s of one optimisation step: forward, backward, AdamW; best of ``--repeat`` timed windows):
  * mean pooling: our VideoCLIP + ClipLoss vs open_clip's CLIP + open_clip's ClipLoss, same architecture (tiny-vit:
    32 px, patch 8, width 64, 2+2 layers), same weights, same frames and captions; the ratio is ours / open_clip;
  * temporal pooling: ours only (open_clip has no temporal head), to show what the head costs;
  * exact gradient accumulation (grad_accum=2): ours only; the cost of the extra no-grad pass;
  * rendering one batch of the action world, and the whole ``train()`` step (render + model + log) as the demo runs it.
Our rows run pipeline.jobs.train's own step function; both sides transform and tokenize the batch inside the step.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import clip_model
from clip_model import VideoCLIP
from clip_model.checkpoint import convert_open_clip
from configs.schema import TrainConfig
from datasets.world import WorldConfig
from pipeline.jobs.train import _as_input, _step, train
from pipeline.jobs.train_data import RenderedWorld


def best_rate(step, repeat: int, steps: int) -> float:
    step()  # warm-up
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - t))
    return max(rates)


def models() -> tuple[open_clip.CLIP, VideoCLIP]:
    cfg = clip_model.MODEL_CONFIGS["tiny-vit"]
    torch.manual_seed(0)
    oc = open_clip.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=CLIPVisionCfg(layers=cfg.vision.layers, width=cfg.vision.width,
                                 head_width=cfg.vision.width // cfg.vision.heads, patch_size=cfg.vision.patch_size,
                                 image_size=cfg.vision.image_size),
        text_cfg=CLIPTextCfg(context_length=cfg.text.context_length, vocab_size=cfg.text.vocab_size,
                             width=cfg.text.width, heads=cfg.text.heads, layers=cfg.text.layers),
        quick_gelu=cfg.quick_gelu,
    )
    ours = clip_model.model_from_checkpoint(
        clip_model.Checkpoint(convert_open_clip(oc.state_dict()), cfg, clip_model.PreprocessConfig(32), "open_clip"),
        source="open_clip tiny")
    return oc.train(), VideoCLIP(ours, "mean", 8).train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed window")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} clips x 8 frames of 32x32")

    world = WorldConfig()
    source = RenderedWorld(world, 0.75)
    batch = source.batch(0, args.batch)
    oc, ours = models()
    transform = clip_model.ClipTransform(ours.clip.preprocess_config)

    oc_loss = open_clip.loss.ClipLoss()
    oc_opt = torch.optim.AdamW(oc.parameters(), lr=1e-4)

    def oc_step() -> None:  # the same work as ours: transform and tokenize the batch, then the step
        frames = _as_input(transform, batch.frames, torch.device("cpu"))  # (B, T, 3, 32, 32)
        B, T = frames.shape[:2]
        img = oc.encode_image(frames.flatten(0, 1)).view(B, T, -1).mean(dim=1)
        txt = oc.encode_text(clip_model.tokenize(batch.captions))
        loss = oc_loss(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                       oc.logit_scale.exp())
        oc_opt.zero_grad()
        loss.backward()
        oc_opt.step()

    def our_step(model: VideoCLIP, opt: torch.optim.Optimizer, accum: int = 1):
        cfg = TrainConfig(name="bench", batch_size=args.batch, grad_accum=accum)

        def step() -> None:  # exactly what train() runs per step (transform, tokenize, forward, backward), then AdamW
            opt.zero_grad()
            _step(model, model, batch, transform, cfg, torch.device("cpu"), None, None)
            opt.step()

        return step

    rows = []
    r_oc = best_rate(oc_step, args.repeat, args.steps)
    r_ours = best_rate(our_step(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4)), args.repeat, args.steps)
    rows.append(("model step, mean pooling", r_ours, r_oc))
    temporal = VideoCLIP(ours.clip, "temporal", 8).train()
    r_t = best_rate(our_step(temporal, torch.optim.AdamW(temporal.parameters(), lr=1e-4)), args.repeat, args.steps)
    rows.append(("model step, temporal pooling", r_t, None))
    r_acc = best_rate(our_step(temporal, torch.optim.AdamW(temporal.parameters(), lr=1e-4), accum=2), args.repeat,
                      args.steps)
    rows.append(("model step, temporal, grad_accum=2", r_acc, None))
    r_render = best_rate(lambda: source.batch(1, args.batch), args.repeat, args.steps)
    rows.append(("render one world batch", r_render, None))
    with tempfile.TemporaryDirectory() as tmp, torch.enable_grad():
        n = args.steps * args.repeat
        result = train(TrainConfig(name="bench", steps=n + 5, batch_size=args.batch, output_dir=tmp,
                                   checkpoint_every=10_000), progress=False)
        seconds = result.history[-1]["seconds"] - result.history[4]["seconds"]
        rows.append(("train() step (render + temporal + log)", n / seconds, None))

    print(f"\n{'row':<42}{'ours steps/s':>14}{'clips/s':>10}{'open_clip':>12}{'ratio':>8}")
    for name, ours_rate, peer in rows:
        peer_s = f"{peer:12.2f}{ours_rate / peer:7.2f}x" if peer else ""
        print(f"{name:<42}{ours_rate:14.2f}{ours_rate * args.batch:10.0f}{peer_s}")
    print("\n(ratio = ours / open_clip on the same weights, frames and captions; our text tower runs each batch only "
          "to its longest caption)")


if __name__ == "__main__":
    main()
