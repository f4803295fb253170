"""CLIP's contrastive loss: the formula, the temperature clamp, and exactness across two gloo processes."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clip_model import ClipLoss
from clip_model.loss import positives

B, D, E, WORLD = 4, 12, 8, 2
# (colour, action) of 8 clips, and what their captions state (-1: left out); clips 0/4 and 1/5 repeat a pair
IMAGE_KEYS = torch.tensor([[0, 0], [1, 1], [2, 0], [0, 1], [0, 0], [1, 1], [2, 2], [1, 0]])
TEXT_KEYS = torch.tensor([[0, 0], [-1, 1], [2, 0], [0, -1], [-1, 0], [1, 1], [2, 2], [-1, -1]])


def _reference_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Written out from the CLIP paper's pseudo-code, independent of ClipLoss."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    n = logits.shape[0]
    li = -torch.log_softmax(logits, dim=1)[range(n), range(n)].mean()
    lt = -torch.log_softmax(logits, dim=0)[range(n), range(n)].mean()
    return (li + lt) / 2


def test_matches_paper_formula():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, E, generator=g), torch.randn(6, E, generator=g)
    scale = torch.tensor(math.log(1 / 0.07))
    assert torch.allclose(ClipLoss()(img, txt, scale), _reference_loss(img, txt, scale), atol=1e-6)


def _reference_multi_positive(img, txt, logit_scale, image_keys, text_keys) -> torch.Tensor:
    """Loop form: for each clip, the mean over the captions that fit it of -log p(caption | clip); the same per
    caption over the clips it fits; average the two directions."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    log_p_txt, log_p_img = logits.log_softmax(dim=1), logits.log_softmax(dim=0)
    n = len(image_keys)

    def fits(i, j):
        return all(t == -1 or t == v for v, t in zip(image_keys[i].tolist(), text_keys[j].tolist()))

    li = sum(-sum(log_p_txt[i, j] for j in range(n) if fits(i, j)) / sum(fits(i, j) for j in range(n))
             for i in range(n)) / n
    lt = sum(-sum(log_p_img[i, j] for i in range(n) if fits(i, j)) / sum(fits(i, j) for i in range(n))
             for j in range(n)) / n
    return (li + lt) / 2


def test_keyed_positives_match_the_loop_formula_and_reduce_to_clip_when_distinct():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(8, E, generator=g), torch.randn(8, E, generator=g)
    scale = torch.tensor(2.5)
    got = ClipLoss()(img, txt, scale, IMAGE_KEYS, TEXT_KEYS)
    assert torch.allclose(got, _reference_multi_positive(img, txt, scale, IMAGE_KEYS, TEXT_KEYS), atol=1e-6)
    assert not torch.allclose(got, ClipLoss()(img, txt, scale), atol=1e-3)  # the positives changed something
    distinct = torch.arange(8)[:, None]
    assert torch.allclose(ClipLoss()(img, txt, scale, distinct, distinct), ClipLoss()(img, txt, scale), atol=1e-6)
    fits_per_caption = positives(IMAGE_KEYS, TEXT_KEYS).sum(dim=0)  # counted by hand from the tables above
    assert fits_per_caption.tolist() == [2, 3, 1, 3, 4, 2, 1, 8]


def test_keys_must_come_in_pairs_and_fit_their_own_clip():
    x = torch.randn(8, E)
    with pytest.raises(ValueError, match="together"):
        ClipLoss()(x, x, torch.tensor(1.0), IMAGE_KEYS)
    with pytest.raises(ValueError, match="own clip"):
        ClipLoss()(x, x, torch.tensor(1.0), IMAGE_KEYS, TEXT_KEYS.roll(1, 0))


def test_perfect_alignment_gives_low_loss_and_shuffled_high():
    x = torch.eye(5)
    scale = torch.tensor(math.log(100.0))
    assert ClipLoss()(x, x, scale) < 1e-10
    assert ClipLoss()(x, x.roll(1, 0), scale) > 50


def test_logit_scale_is_clamped_at_100():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, E, generator=g), torch.randn(4, E, generator=g)
    at_cap = ClipLoss()(img, txt, torch.tensor(math.log(100.0)))
    assert torch.allclose(ClipLoss()(img, txt, torch.tensor(10.0)), at_cap)
    scale = torch.tensor(10.0, requires_grad=True)
    ClipLoss()(img, txt, scale).backward()
    assert scale.grad == 0  # no gradient pushes the temperature further past the cap


def _setup():
    g = torch.Generator().manual_seed(0)
    img_enc, txt_enc = torch.nn.Linear(D, E), torch.nn.Linear(D, E)
    with torch.no_grad():
        for p in [*img_enc.parameters(), *txt_enc.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    scale = torch.nn.Parameter(torch.tensor(2.0))
    x_img, x_txt = torch.randn(WORLD * B, D, generator=g), torch.randn(WORLD * B, D, generator=g)
    return img_enc, txt_enc, scale, x_img, x_txt


def _grads(img_enc, txt_enc, scale) -> list[torch.Tensor]:
    return [p.grad.clone() for p in [*img_enc.parameters(), *txt_enc.parameters(), scale]]


def _keys(part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor] | tuple[()]:
    return () if part is None else (IMAGE_KEYS[part], TEXT_KEYS[part])


def _worker(rank: int, port: int, queue, with_keys: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        img_enc, txt_enc, scale, x_img, x_txt = _setup()
        part = slice(rank * B, (rank + 1) * B)
        loss = ClipLoss()(img_enc(x_img[part]), txt_enc(x_txt[part]), scale, *_keys(part if with_keys else None))
        loss.backward()
        grads = _grads(img_enc, txt_enc, scale)
        for g in grads:  # what DDP does: average gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        queue.put((rank, (mean_loss / WORLD).item(), [g.numpy() for g in grads]))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("with_keys", [False, True], ids=["diagonal", "keyed-positives"])
def test_two_processes_equal_one_process_over_the_concatenated_batch(with_keys):
    img_enc, txt_enc, scale, x_img, x_txt = _setup()
    loss = ClipLoss()(img_enc(x_img), txt_enc(x_txt), scale, *_keys(slice(None) if with_keys else None))
    loss.backward()
    expected = _grads(img_enc, txt_enc, scale)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, with_keys)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(WORLD)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for _, dist_loss, grads in results:
        assert abs(dist_loss - loss.item()) < 1e-5
        for g, e in zip(grads, expected):
            assert torch.allclose(torch.from_numpy(g), e, atol=1e-5), (g, e)
