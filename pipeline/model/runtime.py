"""The runtime options every model job shares (classify, tag, benchmark): which model, where it runs, how videos are
decoded. One type, one set of defaults, one validation."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.video import BACKENDS, Backend

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_CHOICES = ("fp32", "bf16", "fp16")


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
            raise ValueError("model must not be empty: a published name, a checkpoint path or random:<arch>")
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError(f"device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        for name in ("batch_size", "decode_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.decode_timeout_s <= 0:
            raise ValueError(f"decode_timeout_s ({self.decode_timeout_s}) must be > 0")

