"""Losses against direct formulas, and the cross-rank gathering on two gloo processes."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipelines.train.loss import make_loss


def features(n: int, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g), dim=-1)  # correlated, like a half-trained model
    return img, txt


def direct_clip(img: torch.Tensor, txt: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def direct_siglip(img: torch.Tensor, txt: torch.Tensor, scale: float | torch.Tensor, bias: float | torch.Tensor) -> torch.Tensor:
    n = len(img)
    logits = scale * img @ txt.T + bias
    signs = 2 * torch.eye(n) - 1  # +1 on matching pairs, -1 elsewhere
    return -F.logsigmoid(signs * logits).sum() / n


def test_clip_loss_is_symmetric_cross_entropy() -> None:
    img, txt = features(8)
    loss = make_loss("clip", 0, 1)(img, txt, torch.tensor(14.3))
    torch.testing.assert_close(loss, direct_clip(img, txt, 14.3))
    # a bias cannot change a softmax, and must not break the call
    torch.testing.assert_close(make_loss("clip")(img, txt, torch.tensor(14.3), torch.tensor(-3.0)), loss)
    assert list(make_loss("clip").parameters()) == []


def test_siglip_loss_owns_scale_and_bias_for_a_clip_model() -> None:
    img, txt = features(8)
    fn = make_loss("siglip", 0, 1, model_has_logit_bias=False)
    params = dict(fn.named_parameters())
    assert set(params) == {"logit_scale", "logit_bias"}
    assert params["logit_scale"].item() == pytest.approx(math.log(10)) and params["logit_bias"].item() == -10.0
    # the model's scale (100 here) is ignored in favour of the loss's own exp(log 10) = 10
    loss = fn(img, txt, torch.tensor(100.0))
    torch.testing.assert_close(loss, direct_siglip(img, txt, 10.0, -10.0))
    loss.backward()
    assert params["logit_scale"].grad is not None and params["logit_bias"].grad is not None


def test_siglip_loss_uses_the_models_bias_when_it_has_one() -> None:
    img, txt = features(8)
    fn = make_loss("siglip", 0, 1, model_has_logit_bias=True)
    assert list(fn.parameters()) == []
    loss = fn(img, txt, torch.tensor(7.0), torch.tensor(-4.0))
    torch.testing.assert_close(loss, direct_siglip(img, txt, 7.0, -4.0))
    with pytest.raises(ValueError):
        fn(img, txt, torch.tensor(7.0))


def test_unknown_loss() -> None:
    with pytest.raises(ValueError):
        make_loss("triplet", 0, 1)


# ---------------------------------------------------------------------------- two ranks

WORLD, B = 2, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        img_all, txt_all = features(WORLD * B)
        results = {}
        for name, bias in (("clip", None), ("siglip", torch.tensor(-4.0))):
            img = img_all[rank * B:(rank + 1) * B].clone().requires_grad_(True)
            txt = txt_all[rank * B:(rank + 1) * B].clone().requires_grad_(True)
            loss = make_loss(name, rank, WORLD, model_has_logit_bias=True)(img, txt, torch.tensor(9.0), bias)
            loss.backward()
            results.update({f"{name}.loss": loss.detach(), f"{name}.img_grad": img.grad, f"{name}.txt_grad": txt.grad})
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_losses_and_gradients_equal_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    img_all, txt_all = features(WORLD * B)
    for name, direct in (("clip", lambda i, t: direct_clip(i, t, 9.0)), ("siglip", lambda i, t: direct_siglip(i, t, 9.0, -4.0))):
        img, txt = img_all.clone().requires_grad_(True), txt_all.clone().requires_grad_(True)
        full = direct(img, txt)
        full.backward()
        # each rank scores its rows against every rank's columns: the rank mean is the global loss
        torch.testing.assert_close(sum(r[f"{name}.loss"] for r in ranks) / WORLD, full.detach())
        # gradients flow back through the gather to the rank that made each feature; DDP then
        # averages over ranks, so (rank gradient / WORLD) must be the global-batch gradient
        for r, res in enumerate(ranks):
            rows = slice(r * B, (r + 1) * B)
            torch.testing.assert_close(res[f"{name}.img_grad"] / WORLD, img.grad[rows])
            torch.testing.assert_close(res[f"{name}.txt_grad"] / WORLD, txt.grad[rows])
        # and a loss without the other rank's negatives would not match (the test can fail)
        assert not torch.allclose(ranks[0][f"{name}.loss"], direct(img_all[:B], txt_all[:B]))
