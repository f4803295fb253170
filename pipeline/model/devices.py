"""Device names: the one check of a name (torch-free, run when settings are built) and its resolution on this
machine (torch imported when called)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from clip_model.errors import UserError

if TYPE_CHECKING:
    import torch


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
