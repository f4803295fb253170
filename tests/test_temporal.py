"""The learned temporal pooler against its equations written out here, its identity-at-init residual design, order
sensitivity, frame limit, and VideoCLIP's per-frame encoding."""
from __future__ import annotations

import math

import pytest
import torch

import clip_model
from clip_model.temporal import TemporalConfig, TemporalTransformer, VideoCLIP


def _randomized(cfg: TemporalConfig, seed: int = 0) -> TemporalTransformer:
    """A pooler whose every weight is random and non-zero, residual branches and layer-norm gains included."""
    torch.manual_seed(seed)
    pooler = TemporalTransformer(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pooler.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else p.shape[-1] ** -0.5))
    return pooler.eval()


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _reference(pooler: TemporalTransformer, x: torch.Tensor) -> torch.Tensor:
    """ActionCLIP's Transf head from its equations, with plain tensor ops on the pooler's weights:
    h = x + P[:T]; per block h += Wo·softmax(QKᵀ/√d)V of LN1(h), then h += W2·gelu(W1·LN2(h)); out = mean_t(x + h)."""
    B, T, E = x.shape
    heads = pooler.config.heads
    d = E // heads
    h = x + pooler.positional_embedding[:T]
    for blk in pooler.transformer.resblocks:
        y = _layer_norm(h, blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        q, k, v = (y @ blk.attn.in_proj_weight.t() + blk.attn.in_proj_bias).split(E, dim=-1)  # 3 x (B, T, E)
        q, k, v = (t.reshape(B, T, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, H, T, T): every frame sees all
        a = (att @ v).transpose(1, 2).reshape(B, T, E)
        h = h + a @ blk.attn.out_proj.weight.t() + blk.attn.out_proj.bias
        y = _layer_norm(h, blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        u = y @ blk.mlp.c_fc.weight.t() + blk.mlp.c_fc.bias
        u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))  # exact GELU (quick_gelu=False)
        h = h + u @ blk.mlp.c_proj.weight.t() + blk.mlp.c_proj.bias
    return (x + h).mean(dim=1)


@pytest.mark.parametrize("frames", [8, 5])  # all positions, and a shorter clip that uses the first 5
def test_forward_matches_its_equations_on_random_weights(frames):
    pooler = _randomized(TemporalConfig(width=32, num_frames=8, layers=2, heads=4))
    x = torch.randn(3, frames, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, ref = pooler(x), _reference(pooler, x)
        assert (ref - (2 * x.mean(1) + pooler.positional_embedding[:frames].mean(0))).norm() > 1.0  # branches count
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_starts_as_mean_pooling_plus_positions():
    """Residual branches start at zero, so the head begins as ActionCLIP's identity path: x + (x + pos), averaged:
    twice the mean pooling plus a constant, blind to order until training moves the branches."""
    torch.manual_seed(0)
    pooler = TemporalTransformer(TemporalConfig(width=32, num_frames=8, layers=2, heads=4))
    x = torch.randn(3, 8, 32)
    expected = 2 * x.mean(dim=1) + pooler.positional_embedding.mean(dim=0)
    assert torch.allclose(pooler(x), expected, atol=1e-5)
    assert 0.8 < pooler.positional_embedding.std().item() < 1.2  # position_init_std 1.0, not ActionCLIP's 0.02


def test_order_comes_from_the_positions_alone():
    """With non-zero residual branches the head tells a clip from its reversal; without positional embeddings the
    same weights cannot (attention over all frames, no causal mask, is blind to order)."""
    pooler = _randomized(TemporalConfig(width=32, num_frames=8, layers=2, heads=4), seed=2)
    x = torch.randn(16, 8, 32, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        gap = (pooler(x) - pooler(x.flip(1))).norm(dim=-1)  # measured 0.72 to 1.5 (outputs' norms ~11)
        assert gap.min() > 0.5, gap  # an order-blind head gives 0 up to float noise (~1e-6)
        pooler.positional_embedding.zero_()
        torch.testing.assert_close(pooler(x[:, perm]), pooler(x), atol=1e-5, rtol=1e-5)


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
    assert gap > 1.0  # at init (zero branches) the gap is exactly 0: the training gave it order


def test_refuses_longer_clips():
    pooler = TemporalTransformer(TemporalConfig(width=8, num_frames=4, layers=1, heads=2))
    with pytest.raises(ValueError, match="clip has 5 frames; this temporal pooler was built for at most 4"):
        pooler(torch.randn(1, 5, 8))


@pytest.mark.parametrize("pooling", ["mean", "temporal"])
def test_video_clip_pools_each_videos_own_frames(pooling):
    """encode_video on (B, T, 3, S, S) equals encoding each frame alone and pooling each video's T of them."""
    model = VideoCLIP(clip_model.create_model("tiny-vit", seed=0), pooling, num_frames=4).eval()
    if model.temporal is not None:
        model.temporal = _randomized(model.temporal.config, seed=5)
    S = model.clip.config.vision.image_size
    frames = torch.randn(3, 4, 3, S, S, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        per_frame = torch.stack([torch.stack([model.clip.encode_image(f[None])[0] for f in video])
                                 for video in frames])  # (B, T, E), one frame at a time
        expected = per_frame.mean(1) if pooling == "mean" else _reference(model.temporal, per_frame)
        torch.testing.assert_close(model.encode_video(frames), expected, atol=1e-5, rtol=1e-4)
