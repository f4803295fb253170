"""Tensors cached on disk: loaded without pickle code, written atomically, a damaged entry treated as a miss."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


def load_tensor(path: Path) -> torch.Tensor | None:
    """The cached tensor at ``path``, or None when there is none or it cannot be read (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, pickle.UnpicklingError):
        return None  # torch.load raises any of these on a truncated or garbled file


def save_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Write through a per-process temporary name and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(tensor.detach().cpu(), tmp)
    tmp.replace(path)
