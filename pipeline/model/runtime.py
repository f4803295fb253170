"""The options every model job shares (classify, tag, benchmark, watch), each as one type with one set of defaults,
one validation and one set of command-line options: ``RuntimeSettings`` (which model, where it runs, how videos are
decoded), ``ProtocolOverrides`` (what a job changes of the model's own protocol) and ``WindowLabels`` (what the jobs
that label time windows, tag and watch, share); and device names: the one check of a name (torch-free, run when
settings are built) and its resolution on this machine (torch imported when called)."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from clip_model.errors import UserError
from datasets.labels import check_unique_labels
from pipeline.video import BACKENDS, Backend
from pipeline.video.samplers import FRAME_CHOICES

from .families import POOLINGS, WINDOW_POOLINGS, Pooling

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_CHOICES = ("fp32", "bf16", "fp16")


def check_device(spec: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, else a one-line error."""
    if spec not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", spec):
        raise UserError(f"device {spec!r}: choose auto, cpu, cuda or cuda:N")
    return spec


def resolve_device(spec: str) -> torch.device:
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a device this machine has."""
    import torch

    if check_device(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {spec}: CUDA is not available on this machine")
    return torch.device(spec)


def check_frame_choice(sampling: str) -> None:
    """Refuse a ``--sampling`` that is not one of ``samplers.FRAME_CHOICES`` (classify's and tag's)."""
    if sampling not in FRAME_CHOICES:
        raise UserError(f"sampling {sampling!r}: choose one of {', '.join(FRAME_CHOICES)}")


@dataclass(frozen=True)
class RuntimeSettings:
    model: str = "ViT-B/32"  # a published name, a checkpoint file or folder, or random:<arch>
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: Precision = "fp32"  # the model's weights
    batch_size: int = 32  # frames per image-encoder call
    backend: Backend = "auto"  # video decoder
    decode_workers: int = 2  # supervised decode processes
    decode_timeout_s: float = 120.0  # a worker that returns nothing (tag: no chunk) for this long is killed

    def __post_init__(self) -> None:
        if not self.model:
            raise UserError("model must not be empty: a published name, a checkpoint path or random:<arch>")
        check_device(self.device)
        if self.precision not in PRECISION_CHOICES:
            raise UserError(f"precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
        if self.backend not in BACKENDS:
            raise UserError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        for name in ("batch_size", "decode_workers"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.decode_timeout_s <= 0:
            raise UserError(f"decode_timeout_s ({self.decode_timeout_s}) must be > 0")


    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser, precision: str = "auto") -> None:
        """These settings as command-line options, with their defaults (the precision: ``auto``, resolved by
        ``from_arguments``)."""
        p.add_argument("--model", help=f"published name (e.g. ViT-B/32), checkpoint file/folder, or random:<arch> for "
                                       f"an untrained model (default: {cls.model}; classify --probe: the probe's own)")
        p.add_argument("--device", default=cls.device, help="auto, cpu, cuda or cuda:N")
        p.add_argument("--precision", choices=("auto", *PRECISION_CHOICES), default=precision,
                       help="model weights; auto (the default): bf16 on a CPU with native bf16 (AMX or AVX-512 BF16) "
                            "where its matmuls time at least 1.2x faster (measured once per host, kept in the cache "
                            "folder), bf16 on a GPU that has it, fp16 on other GPUs, else fp32. bf16 keeps features "
                            "within cosine 0.9999 of fp32")
        p.add_argument("--batch-size", type=int, default=cls.batch_size, help="frames per image-encoder batch")
        p.add_argument("--backend", choices=BACKENDS, default=cls.backend,
                       help="video decoder: auto is PyAV (exact frame index), falling back to decord where PyAV cannot "
                            "open the file")
        p.add_argument("--decode-workers", type=int, default=cls.decode_workers,
                       help="supervised decode processes (tag also cuts a video of two minutes or more into up to this "
                            "many time ranges, decoded at once)")
        p.add_argument("--decode-timeout", type=float, default=cls.decode_timeout_s,
                       help="seconds a decode worker may go without a result (tag: without a chunk) before it is killed")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, model: str | None = None,
                       resumed_precision: str | None = None) -> RuntimeSettings:
        """The settings ``add_arguments`` parsed, with ``--precision auto`` resolved for this machine (and said on
        stderr): what runs, and what the tag index and classify's JSON record, is the precision it resolved to.
        ``model``: the one to use when ``--model`` is not given (else the default); ``resumed_precision``: the one
        the output being resumed was written in, which auto keeps."""
        from .loading import resolve_precision

        if args.precision == "auto" and resumed_precision:
            precision, why = resumed_precision, f"auto: the index being resumed was tagged in {resumed_precision}"
        else:
            precision, why = resolve_precision(args.precision, resolve_device(args.device))
        if args.precision == "auto":
            print(f"precision: {precision} ({why})", file=sys.stderr)
        return cls(args.model or model or cls.model, args.device, precision,  # type: ignore[arg-type]
                   args.batch_size, args.backend, args.decode_workers, args.decode_timeout)


@dataclass(frozen=True)
class ProtocolOverrides:
    """What a job asks instead of the model's own protocol; None keeps the model's (what its checkpoint records, else
    its family's row in ``families.FAMILIES``)."""

    templates: str | tuple[str, ...] | None = None  # a set's name, a file of templates, or the templates themselves
    num_frames: int | None = None  # frames per clip or window; X-CLIP checkpoints fix theirs
    pooling: Pooling | None = None  # how frame embeddings become the video's (families.POOLINGS)

    def __post_init__(self) -> None:
        if self.templates is not None and not isinstance(self.templates, str):
            object.__setattr__(self, "templates", tuple(self.templates))  # a list given, a tuple kept
        if self.num_frames is not None and self.num_frames < 1:
            raise UserError(f"num_frames ({self.num_frames}) must be >= 1")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise UserError(f"pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")

    def check_pooling(self, allowed: Sequence[str], job: str) -> None:
        """Refuse a pooling this job cannot apply (tag scores one vector per window: no frame_scores)."""
        if self.pooling is not None and self.pooling not in allowed:
            raise UserError(f"{job}: pooling {self.pooling!r}: choose one of {', '.join(allowed)}")

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser, poolings: Sequence[str] = POOLINGS,
                      frames_help: str = "frames per clip") -> None:
        p.add_argument("--templates", default=None, help="none|video|ucf101|kinetics700|FILE (one template per line); "
                                                         "default: the model's (run_pipeline.py models)")
        p.add_argument("--num-frames", type=int, default=None,
                       help=f"{frames_help}; default: the model's (fixed by X-CLIP checkpoints), else 8")
        p.add_argument("--pooling", choices=poolings, default=None,
                       help="mean/max of frame embeddings, the temporal pooler of a checkpoint (written by train, or "
                            "ActionCLIP's)" + (", the mean of per-frame probabilities" * ("frame_scores" in poolings))
                            + ", or the mean of unit frame embeddings (Open-VCLIP); default: the model's")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ProtocolOverrides:
        """The parsed options; templates from a pipe (``--templates <(...)``) are read here, once, so that what a
        job records (tag's index) is the templates themselves, not a pipe's name that means nothing later."""
        templates = args.templates
        if templates and Path(templates).exists() and not Path(templates).is_file() and not Path(templates).is_dir():
            from .prompts import load_templates

            templates = tuple(load_templates(templates))
        return cls(templates, args.num_frames, args.pooling)


@dataclass(frozen=True)
class WindowLabels:
    """The settings of a job that labels sliding windows (tag, watch; each extends it and names itself in ``job``):
    the model, the labels, the protocol overrides, the windows and how many labels each keeps."""

    runtime: RuntimeSettings
    labels: tuple[str, ...]
    overrides: ProtocolOverrides = ProtocolOverrides()  # templates, frames per window, pooling; None: the model's
    window_s: float = 4.0
    stride_s: float = 2.0
    topk: int = 5
    job = "tag"  # what errors name

    def __post_init__(self) -> None:
        if not self.labels:
            raise UserError(f"{self.job} needs at least one label")
        check_unique_labels(self.labels)
        if self.topk < 1:
            raise UserError(f"topk ({self.topk}) must be >= 1")
        if self.window_s <= 0 or self.stride_s <= 0:
            raise UserError("window_s and stride_s must be > 0")
        self.overrides.check_pooling(WINDOW_POOLINGS, self.job)
