"""CLIP's symmetric contrastive (InfoNCE) loss, correct under torch.distributed.

Each rank scores its local rows against the features of every rank, gathered with gradients (all_gather's backward
sums each rank's contribution back to the owner). The mean of the per-rank losses equals the single-process loss over
the concatenated batch, and DDP's gradient averaging then reproduces its gradients exactly.

Batches may repeat a caption, or hold captions that fit several clips ("something moving left"): a plain diagonal
target would then push true matches apart as negatives. Optional keys describe each clip and caption; every caption
that fits a clip is a positive, and each row's target is spread evenly over its positives (ActionCLIP's answer to
repeated labels). With distinct keys this is CLIP's loss exactly.
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


def _gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (world·B, ...) without gradients."""
    if _world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def positives(image_keys: torch.Tensor, text_keys: torch.Tensor) -> torch.Tensor:
    """(B, K) clip keys and (N, K) caption keys -> (B, N) bool: caption fits clip. A caption key of -1 says nothing
    about that attribute (the caption left it out); every key it does state must equal the clip's."""
    return ((text_keys[None] == -1) | (text_keys[None] == image_keys[:, None])).all(dim=-1)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows of ``targets`` (bool) spread evenly over their positives; mean over rows."""
    t = targets.to(logits.dtype)
    return -(t / t.sum(dim=1, keepdim=True) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) per rank -> (world·B, D) in rank order; gradients flow back to every rank's own part.

    Every rank must pass the same B.
    """
    return x if _world()[1] == 1 else _GatherWithGrad.apply(x)


class ClipLoss(nn.Module):
    """(image_features (B, E), text_features (B, E), logit_scale log-space scalar) -> scalar loss.

    Features are L2-normalised here; the temperature ``exp(logit_scale)`` is clamped at 100 as in CLIP. ``image_keys``
    and ``text_keys`` (B, K) int, both or neither, turn on positives by key (see ``positives``); row i's own caption
    must fit its clip.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                image_keys: torch.Tensor | None = None, text_keys: torch.Tensor | None = None) -> torch.Tensor:
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        rank, _ = _world()
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)  # (N, E)
        scale = logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        logits_per_image = scale * img @ all_txt.t()  # (B, N)
        logits_per_text = scale * txt @ all_img.t()  # (B, N)
        if (image_keys is None) != (text_keys is None):
            raise ValueError("pass image_keys and text_keys together, or neither")
        if image_keys is None or text_keys is None:  # both None (checked above); spelled out to narrow both
            labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        fits_image = positives(image_keys, _gather(text_keys))  # (B, N): captions that fit each local clip
        fits_text = positives(_gather(image_keys), text_keys).t()  # (B, N): clips each local caption fits
        if not fits_image.diagonal(rank * img.shape[0]).all():
            raise ValueError("a caption's keys do not fit its own clip's keys")
        return (_soft_cross_entropy(logits_per_image, fits_image) + _soft_cross_entropy(logits_per_text, fits_text)) / 2
