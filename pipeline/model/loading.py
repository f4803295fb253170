"""Model specs accepted on the command line: a published name, a checkpoint path, or ``random:<arch>``."""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import cast

import torch

import clip_model
from clip_model.adapted import ADAPTED_MODELS
from clip_model.errors import UserError
from clip_model.hub import hub_folder
from clip_model.names import published_names, resolve_name

from .families import FAMILIES, family
from .video_text import VideoTextModel

BF16_MIN_SPEEDUP = 1.2  # what bf16 must gain over fp32 on this CPU for --precision auto to take it


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The flag of this CPU that gives native bf16 matrix math (``amx_bf16`` or ``avx512_bf16``, from Linux's
    ``cpuinfo``), or None: elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


BF16_CACHE = "bf16_speedup.json"  # under the cache folder: host key -> the measured speedup and when


def host_key() -> str:
    """What a bf16 timing depends on: the CPU model and its bf16 flag, the torch build, the threads it runs on."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        model = "unknown"
    return f"{model} | {cpu_bf16()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


@functools.cache
def bf16_speedup() -> tuple[float, str]:
    """(fp32 time / bf16 time of ViT-sized matmuls on this CPU, where the figure came from). Measured once per host
    (``host_key``) and kept under the cache folder, so that identical commands take the same precision however
    loaded the machine is when they start; delete the file to measure again."""
    path = clip_model.cache_dir() / BF16_CACHE
    key = host_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict) and isinstance(cached[key].get("speedup"), float):
        return cached[key]["speedup"], f"measured {cached[key].get('date', '?')}, kept in {path}"
    speedup = measure_bf16_speedup()
    cached[key] = {"speedup": speedup, "date": time.strftime("%Y-%m-%d")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
        where = f"measured now, kept in {path}"
    except OSError:
        where = "measured now (the cache folder is not writable: measured again next time)"
    return speedup, where


def measure_bf16_speedup(rounds: int = 9, shape: tuple[int, int, int] = (1024, 768, 3072)) -> float:
    """The median over ``rounds`` of fp32 time / bf16 time of (m, k) @ (k, n) for ``shape`` (m, k, n), by default a
    ViT-B MLP's (1024, 768) @ (768, 3072), each the best of 3, the two precisions timed in turn so that a burst of
    load falls on both (~1 s where bf16 is native; ~70 s where it is emulated, which the flags rule out first). The
    flags alone do not say it: one host with AVX-512 BF16 ran ViT-B/32 2.9-3.7x faster in bf16, another (without
    AMX) 0.70x as fast; and a single 0.1 s timing read 0.55x to 54.9x on one loaded host."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    for x, y in pairs.values():
        x @ y  # warm up
    ratios = []
    for _ in range(rounds):
        best = {}
        for dtype, (x, y) in pairs.items():
            times = []
            for _ in range(3):
                start = time.perf_counter()
                x @ y
                times.append(time.perf_counter() - start)
            best[dtype] = min(times)
        ratios.append(best[torch.float32] / best[torch.bfloat16])
    return float(sorted(ratios)[len(ratios) // 2])


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(precision, why). ``auto``: on CUDA bf16 where the GPU supports it, else fp16; on a CPU bf16 where it has
    native bf16 (``cpu_bf16``) and bf16 matmuls run at least ``BF16_MIN_SPEEDUP`` times fp32's here
    (``bf16_speedup``; features stay within cosine 0.9999), else fp32. Any other value is kept."""
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cuda":  # native bf16 from compute capability 8.0 (Ampere); before it bf16 is emulated
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return "bf16", "auto: this GPU has native bf16"
        return "fp16", "auto: this GPU has no native bf16"
    flag = cpu_bf16()
    if not flag:
        return "fp32", "auto: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag)"
    speedup, source = bf16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"auto: this CPU has {flag}, and bf16 matmuls run {speedup:.1f}x fp32's here ({source})"
    return "fp32", f"auto: this CPU has {flag}, but bf16 matmuls ran {speedup:.2f}x fp32's here ({source})"


def load_model(spec: str, device: torch.device, precision: str = "fp32", pooling: str | None = None,
               num_frames: int | None = None) -> VideoTextModel:
    """The model of checkpoint ``spec`` behind the jobs' interface (``model.video_text``), with the temporal pooler the
    same file carries (written by train, or ActionCLIP's), read once; ``pooling`` None takes the checkpoint's recorded
    one, else the family's (the interface refuses pooling temporal where the file has no pooler); ``num_frames`` None
    likewise (the frames per clip, fixed at load for the families that encode a clip's frames together).
    Any name ``clip_model.names`` resolves (``random:tiny-vit``: an untrained CLIP, seed 0, for smoke tests),
    whatever its family."""
    loaded = clip_model.load_video_model(spec, device, precision=precision)
    return VideoTextModel(loaded.model, loaded.transform, pooling, loaded.head, name=spec, recorded=loaded.protocol,
                          frames=num_frames)


def clip_only(model: clip_model.CLIP | clip_model.SigLIP, spec: str) -> clip_model.CLIP:
    """Training fine-tunes the families marked trainable (CLIP: its softmax InfoNCE loss on its own towers); the
    others' checkpoints are refused there."""
    if not family(model.family).trainable:
        trainable = ", ".join(name for name, f in FAMILIES.items() if f.trainable)
        raise UserError(f"{spec}: a {model.family} checkpoint; train fine-tunes {trainable} checkpoints only (the "
                         "other families classify, benchmark, tag, retag and search)")
    return cast(clip_model.CLIP, model)


def model_identity(spec: str, precision: str = "fp32") -> dict:
    """What identifies a model's weights, for caches and the tag index: a published name (its SHA256 is fixed) or
    ``random:<arch>`` as given; a checkpoint by its resolved path and every file's size and modification time (so an
    overwritten file is another model)."""
    name = resolve_name(spec)
    if name.kind in ("random", "openai"):
        return {"spec": spec, "precision": precision}
    if name.kind == "hub":  # its cached files identify it (the hub's main branch can move)
        return {"spec": spec, "precision": precision} | _file_stamps(hub_folder(spec))
    base = os.environ.get("CLIP_VIDEO_BASE_MODEL")  # ViFi-CLIP's and Open-VCLIP's weights depend on it
    if name.kind == "adapted":
        file = clip_model.cache_dir() / "adapted" / ADAPTED_MODELS[spec].file
        return {"spec": spec, "precision": precision} | (_file_stamps(file) if file.is_file() else {}) | (
            {"base": base} if base else {})
    return {"spec": str(Path(spec).expanduser().resolve()), "precision": precision} | _file_stamps(Path(spec)) | (
        {"base": base} if base else {})


def _file_stamps(path: Path) -> dict:
    path = path.expanduser().resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {"files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def model_key(identity: dict) -> str:
    """A model identity as one string, for cache keys."""
    return json.dumps(identity, sort_keys=True)


def published_table() -> list[tuple[str, ...]]:
    """The ``models`` listing: a header, then each published name with its family's protocol (input size, frames,
    scoring, templates) and where its weights come from."""
    rows: list[tuple[str, ...]] = [("name", "family", "input", "frames", "scoring", "templates", "weights from")]
    for name in published_names():
        assert name.family is not None  # a published name's family is known before its weights are read
        protocol = FAMILIES[name.family]
        rows.append((name.spec, name.family, str(name.image_size), str(name.frames or protocol.frames),
                     protocol.scoring, protocol.templates.name, name.weights_from))
    return rows


def models_listing() -> str:
    """What ``run_pipeline.py models`` prints: ``published_table`` in columns, then how to load the rest."""
    from clip_model.names import random_names

    rows = published_table()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    return (f"{table}\n\nclassify, benchmark, tag, retag, search, serve and watch take every family; train fine-tunes "
            "clip. Any checkpoint file or folder also works as --model. Frames: the default (X-CLIP's are fixed by the "
            "checkpoint). ViFi-CLIP and Open-VCLIP also read the CLIP they were tuned from (downloaded by name, or "
            f"$CLIP_VIDEO_BASE_MODEL).\n\nUntrained models, for trying things without weights: {', '.join(random_names())}"
            " (random CLIP weights, seed 0; tiny-vit and tiny-rn run in seconds on a CPU).")
