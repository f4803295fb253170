"""CLIP's symmetric contrastive (InfoNCE) loss, correct under torch.distributed.

Each rank scores its local rows against the features of every rank, gathered with gradients (all_gather's backward
sums each rank's contribution back to the owner). The mean of the per-rank losses equals the single-process loss over
the concatenated batch, and DDP's gradient averaging then reproduces its gradients exactly.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows (all_reduce works on gloo too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (world·B, D)
        rank, world = _world()
        ctx.rows = slice(rank * x.shape[0], (rank + 1) * x.shape[0])
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) per rank -> (world·B, D) in rank order; gradients flow back to every rank's own part.

    Every rank must pass the same B.
    """
    return x if _world()[1] == 1 else _GatherWithGrad.apply(x)


class ClipLoss(nn.Module):
    """(image_features (B, E), text_features (B, E), logit_scale log-space scalar) -> scalar loss.

    Features are L2-normalised here; the temperature ``exp(logit_scale)`` is clamped at 100 as in CLIP.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        rank, _ = _world()
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)  # (N, E)
        scale = logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        logits_per_image = scale * img @ all_txt.t()  # (B, N)
        logits_per_text = scale * txt @ all_img.t()  # (B, N)
        labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
