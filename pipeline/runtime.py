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


# glibc's mallopt parameter for the free memory kept at the top of the heap (malloc.h: M_TOP_PAD)
_M_TOP_PAD = -2
HEAP_PAD_BYTES = 512 << 20


def keep_freed_memory(pad: int = HEAP_PAD_BYTES) -> bool:
    """Have glibc's malloc keep up to ``pad`` bytes of freed heap instead of handing it back to the kernel at once.

    A training or inference step allocates and frees the same few-megabyte activations every time; by default glibc
    returns them to the kernel (an mmap or a heap trim) and the next step page-faults them back in, zero-filled. On
    the demo's training that churn was 11.5 million page faults and 51 s of system time, and keeping the memory made
    a step 16 % faster with bit-identical results (docs/benchmarks.md). PyTorch's CPU tuning guide reaches the same
    end with jemalloc or tcmalloc, which a pip install cannot bring. The cost is at most ``pad`` bytes of resident
    memory kept after a peak. Returns False where malloc is not glibc's (musl, macOS): nothing changes there."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, pad))
