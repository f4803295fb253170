"""The learned temporal pooler: identity-at-init residual design, order sensitivity, frame limit."""
from __future__ import annotations

import pytest
import torch

from clip_model.temporal import TemporalConfig, TemporalTransformer


def test_starts_as_mean_pooling_plus_positions():
    """Residual branches start at zero, so the head begins as ActionCLIP's identity path: x + (x + pos)."""
    torch.manual_seed(0)
    pooler = TemporalTransformer(TemporalConfig(width=32, num_frames=8, layers=2, heads=4))
    x = torch.randn(3, 8, 32)
    expected = 2 * x.mean(dim=1) + pooler.positional_embedding.mean(dim=0)
    assert torch.allclose(pooler(x), expected, atol=1e-5)


def test_sees_frame_order_once_trained_a_little():
    torch.manual_seed(0)
    pooler = TemporalTransformer(TemporalConfig(width=16, num_frames=6, layers=1, heads=2))
    x = torch.randn(32, 6, 16)
    target = torch.randn(16)
    opt = torch.optim.Adam(pooler.parameters(), lr=1e-2)
    for _ in range(60):  # learn to map forward clips to +target and reversed clips to -target
        loss = ((pooler(x) - target) ** 2).mean() + ((pooler(x.flip(1)) + target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gap = (pooler(x) - pooler(x.flip(1))).norm(dim=-1).mean()
    assert gap > 1.0  # mean pooling gives exactly 0 here: it cannot see order
    assert torch.allclose(x.mean(1), x.flip(1).mean(1), atol=1e-6)


def test_refuses_longer_clips():
    pooler = TemporalTransformer(TemporalConfig(width=8, num_frames=4, layers=1, heads=2))
    with pytest.raises(ValueError, match="clip has 5 frames; this temporal pooler was built for at most 4"):
        pooler(torch.randn(1, 5, 8))
