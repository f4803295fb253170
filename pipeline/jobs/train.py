"""Contrastive video-text training: CLIP's symmetric InfoNCE with its learned temperature, on pooled frame embeddings.

    source (train_data) -> frames (B, T, H, W, 3), captions -> VideoCLIP -> ClipLoss -> AdamW (warmup, cosine)

One process or many (``torchrun``: gloo on CPU, NCCL on GPU): ``batch_size`` is the global batch, split over ranks and
then over ``grad_accum`` micro-batches, and the data of every step is a pure function of (seed, step). Accumulation is
exact, as in open_clip: every micro-batch's features are first computed without gradients, then each micro-batch is
recomputed with gradients and the loss taken over the whole batch, so the negatives are the full batch's.

The run directory holds ``checkpoint.pt`` (model, optimizer, step, history and config; written atomically every
``checkpoint_every`` steps), ``metrics.csv`` or ``metrics.jsonl`` (one row per step), ``config.yaml`` and, at the end,
``model.pt``: a clip_video checkpoint (with the temporal pooler) that classify, benchmark and tag load. Rerunning the
same command after a kill resumes from the checkpoint and gives the losses of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

import clip_model
from clip_model.errors import UserError
from clip_model.names import RANDOM_PREFIX
from clip_model.temporal import VideoCLIP
from configs.schema import ConfigError, TrainConfig, changed_settings
from datasets.world import prompt_templates
from pipeline.jobs.progress import progress as progress_bar
from pipeline.model.loading import clip_only
from pipeline.model.prompts import class_embeddings
from pipeline.model.runtime import resolve_device

from .distributed import barrier, init_distributed
from .train_data import Batch, ClipPool, ClipSource, RenderedWorld

TRAIN_STATE_TAG = "clip_video.train_state"
# settings a resume may change: they do not alter what is computed
RESUME_FREE = ("checkpoint_every", "device", "metrics", "name", "output_dir")


@dataclass
class TrainResult:
    model: VideoCLIP  # eval mode, on CPU
    history: list[dict]  # one row per step: step, loss, lr, temperature, seconds
    out: Path
    resumed_from: int  # 0 for a fresh run


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_source(cfg: TrainConfig) -> ClipSource:
    if cfg.data == "world":
        return RenderedWorld(cfg.world, cfg.caption_dropout, cfg.seed)
    return ClipPool.from_csv(cfg.data, cfg.num_frames, cfg.seed)


def build_model(cfg: TrainConfig, num_frames: int) -> VideoCLIP:
    """The starting CLIP (random ``arch`` or a loaded checkpoint) plus a fresh pooler, seeded, with towers frozen."""
    torch.manual_seed(cfg.seed)
    if cfg.init.startswith(RANDOM_PREFIX):
        clip = clip_model.create_model(cfg.init[len(RANDOM_PREFIX):], seed=cfg.seed)
    else:
        clip = clip_only(clip_model.load(cfg.init)[0], cfg.init)
    model = VideoCLIP(clip.float(), cfg.pooling, num_frames, cfg.temporal_layers)
    for name, p in clip.named_parameters():
        tower = "image" if name.startswith("visual.") else None if name == "logit_scale" else "text"
        p.requires_grad_(tower is None or cfg.freeze not in (tower, "both"))
    return model


def _train_mode(model: VideoCLIP, cfg: TrainConfig) -> None:
    """Frozen towers stay in eval mode (ModifiedResNet's batch-norm statistics must not move either)."""
    model.train()
    if cfg.freeze in ("image", "both"):
        model.clip.visual.eval()


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings or the temperature (as CLIP)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _as_input(transform: clip_model.ClipTransform, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> normalised (B, T, 3, S, S) on ``device``."""
    B, T = frames.shape[:2]
    x = transform.video(frames.flatten(0, 1).to(device))  # (B·T, 3, S, S)
    return x.view(B, T, *x.shape[1:])


# ---- checkpoints -------------------------------------------------------------------------------------------------


def config_dict(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as YAML and JSON hold them


def _save_state(path: Path, model: VideoCLIP, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                cfg: TrainConfig, step: int, history: list[dict]) -> None:
    state = {
        "format": TRAIN_STATE_TAG, "version": 1, "step": step, "config": config_dict(cfg),
        "clip_config": model.clip.config.to_dict(), "preprocess": dataclasses.asdict(model.clip.preprocess_config),
        "temporal_config": model.temporal.config.to_dict() if model.temporal is not None else None,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill leaves the previous checkpoint or this one, never half of one


def _load_state(path: Path, cfg: TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UserError(f"{path}: cannot read the training checkpoint ({type(e).__name__}: {e}); delete it or "
                         "pass --restart to start over") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_TAG:
        raise UserError(f"{path}: not a training checkpoint of this project")
    changed = changed_settings(state["config"], config_dict(cfg), ignore=RESUME_FREE)
    if changed:
        raise UserError(f"{path}: cannot resume, settings changed since it was written: {'; '.join(changed)}; "
                         "restore them, use another output_dir, or pass --restart")
    return state


def _metrics_writer(path: Path, fmt: str, history: list[dict]):
    """Rewrite the log from the checkpoint's history (rows a kill left past it are dropped), then append."""
    fields = ["step", "loss", "lr", "temperature", "seconds"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(history)
        else:
            f.writelines(json.dumps(row) + "\n" for row in history)
    tmp.replace(path)
    f = open(path, "a", newline="")  # noqa: SIM115 - closed by the caller
    writer = csv.DictWriter(f, fieldnames=fields) if fmt == "csv" else None

    def write(row: dict) -> None:
        if writer is not None:
            writer.writerow(row)
        else:
            f.write(json.dumps(row) + "\n")
        f.flush()

    return write, f


def trained_protocol(cfg: TrainConfig, num_frames: int) -> dict:
    """How a trained model is meant to be used, recorded in its checkpoint for every job's defaults: the pooling it
    trained, its clips' frame count and, on the synthetic world, the prompt forms of its captions (elsewhere the
    family's templates)."""
    templates = prompt_templates(cfg.world) if cfg.data == "world" else None
    return {"pooling": cfg.pooling, "frames": num_frames, "templates": templates}


def export_model(model: VideoCLIP, path: Path, cfg: TrainConfig | None = None) -> Path:
    """A clip_video checkpoint of the trained CLIP and its temporal pooler, for classify / benchmark / tag, with the
    protocol it was trained for (``trained_protocol``)."""
    extra = {"training": config_dict(cfg)} if cfg is not None else None
    protocol = trained_protocol(cfg, model.num_frames) if cfg is not None else None
    return clip_model.save_checkpoint(model.clip, path, extra, temporal=model.temporal, protocol=protocol)


# ---- one step ------------------------------------------------------------------------------------------------------


def _step(model: VideoCLIP, ddp: nn.Module, batch: Batch, transform: clip_model.ClipTransform, cfg: TrainConfig,
          device: torch.device, amp: torch.dtype | None, scaler: torch.amp.GradScaler | None) -> float:
    """Forward and backward over the rank's rows of one global batch; returns the loss (of the whole batch)."""
    loss_fn = clip_model.ClipLoss()
    frames = _as_input(transform, batch.frames, device)  # (b, T, 3, S, S)
    tokens = clip_model.tokenize(batch.captions).to(device)  # (b, L)
    keys = batch.clip_keys.to(device), batch.caption_keys.to(device)
    scale = model.clip.logit_scale
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    if cfg.grad_accum == 1:
        with autocast:
            video, text = ddp(frames, tokens)
        loss = loss_fn(video.float(), text.float(), scale, *keys)
        backward(loss)
        return float(loss.detach())
    chunks = [slice(i, i + len(frames) // cfg.grad_accum) for i in range(0, len(frames), len(frames) // cfg.grad_accum)]
    with torch.no_grad(), autocast:
        cached = [tuple(t.float() for t in model(frames[c], tokens[c])) for c in chunks]  # [(m, E), (m, E)]
    for j, c in enumerate(chunks):
        sync = j == len(chunks) - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
        # not sync implies ddp is a DistributedDataParallel (checked above), which mypy cannot follow through sync
        with contextlib.nullcontext() if sync else cast(nn.parallel.DistributedDataParallel, ddp).no_sync():
            with autocast:
                video, text = ddp(frames[c], tokens[c])
            videos = torch.cat([video.float() if i == j else v for i, (v, _) in enumerate(cached)])
            texts = torch.cat([text.float() if i == j else t for i, (_, t) in enumerate(cached)])
            # the whole-batch loss, live only through micro-batch j: summed over j, exactly the full gradient
            # (the temperature is live once, in the synchronised pass, or it would be counted grad_accum times)
            loss = loss_fn(videos, texts, scale if j == len(chunks) - 1 else scale.detach(), *keys)
            backward(loss)
    return float(loss.detach())


# ---- the loop ------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, source: ClipSource | None = None, *, restart: bool = False,
          progress: bool = True) -> TrainResult:
    """Train (or resume) the run of ``cfg`` in ``cfg.out``; under torchrun every rank calls this."""
    rank, world, device = init_distributed(resolve_device(cfg.device))
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be a multiple of ranks x grad_accum "
                          f"({world} x {cfg.grad_accum})")
    out = cfg.out
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if restart:
            ckpt_path.unlink(missing_ok=True)
    barrier(world)
    source = source or make_source(cfg)
    model = build_model(cfg, source.num_frames).to(device)
    opt = _optimizer(model, cfg)
    amp = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    history: list[dict] = []
    start = 0
    if ckpt_path.exists():
        state = _load_state(ckpt_path, cfg)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        start, history = state["step"], list(state["history"])
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    transform = clip_model.ClipTransform(model.clip.preprocess_config)
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
        log, log_file = _metrics_writer(out / f"metrics.{cfg.metrics}", cfg.metrics, history)
    per_rank = cfg.batch_size // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    elapsed = history[-1]["seconds"] if history else 0.0
    bar = progress_bar(cfg.steps, initial=start, desc=f"train {cfg.name}", unit="step",
                       enabled=progress and not rank)  # a bar on a terminal, a line every few seconds in a log
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            _train_mode(model, cfg)
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = _step(model, ddp, source.batch(step, cfg.batch_size, rows), transform, cfg, device, amp, scaler)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if world > 1:  # the whole batch's loss is the mean of the ranks' losses
                t = torch.tensor([loss], dtype=torch.float64)
                dist.all_reduce(t)
                loss = float(t) / world
            elapsed += time.perf_counter() - t0
            row = {"step": step + 1, "loss": loss, "lr": lr, "seconds": round(elapsed, 3),
                   "temperature": float(model.clip.logit_scale.detach().exp().clamp(max=100))}
            history.append(row)
            if rank == 0:
                log(row)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                bar.update()
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    _save_state(ckpt_path, model, opt, scaler, cfg, step + 1, history)
            barrier(world)
    finally:
        bar.close()
        if rank == 0:
            log_file.close()
    model = model.cpu().eval()
    if rank == 0 and (start < cfg.steps or not (out / "model.pt").exists()):  # a finished run keeps its file
        export_model(model, out / "model.pt", cfg)
    barrier(world)
    return TrainResult(model, history, out, start)


@torch.no_grad()
def evaluate_actions(model: VideoCLIP, frames: torch.Tensor, actions: list[str], labels: list[int],
                     templates: list[str]) -> dict:
    """Zero-shot action top-1 on uint8 (N, T, H, W, 3) clips: each action's prompts (``templates``) ensembled as in
    CLIP (normalised embeddings averaged), scaled cosine, argmax."""
    transform = clip_model.ClipTransform(model.clip.preprocess_config)
    text = class_embeddings(model.clip, actions, templates)  # (A, E)
    preds: list[int] = []
    for k in range(0, len(frames), 64):
        video = F.normalize(model.encode_video(_as_input(transform, frames[k : k + 64], torch.device("cpu"))), dim=-1)
        preds += (video @ text.t()).argmax(-1).tolist()
    return {"top1": sum(p == y for p, y in zip(preds, labels)) / len(labels), "predictions": preds}
