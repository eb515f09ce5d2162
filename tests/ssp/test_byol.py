"""BYOL (Grill et al. 2020; Saeed et al. 2022): loss against a slow reference, EMA target network,
momentum schedule against lightly's, what transfers. The shared registry tests
(``test_methods.py``) check that it trains and transfers exactly the encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightly.utils.scheduler import cosine_schedule
from torch.utils.data import default_collate

from cardiossp.errors import ConfigError
from cardiossp.ssp import build_method

from .test_methods import disc_sample, tiny_unet

SIZE = 32
TINY = {"input_size": SIZE, "proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}



@pytest.fixture(scope="module")
def batch() -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    method = build_method("byol", tiny_unet, TINY)
    return default_collate([method.make_views(disc_sample(rng, i, 6)) for i in range(6)])


def slow_byol_loss(p0, z1, p1, z0) -> float:
    """Grill et al. eq. 2, symmetrised: mean over the batch of (2 - 2 cos(p0, z1)) + (2 - 2 cos(p1, z0))."""

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    rows = zip(p0.tolist(), z1.tolist(), p1.tolist(), z0.tolist())
    per_sample = [(2 - 2 * cos(a, b)) + (2 - 2 * cos(c, d)) for a, b, c, d in rows]
    return sum(per_sample) / len(per_sample)


def test_loss_matches_slow_reference(batch):
    method = build_method("byol", tiny_unet, TINY)
    out = method.forward_loss(batch, 0.0)
    p0, p1 = method.online(batch["view0"]), method.online(batch["view1"])
    z0, z1 = method.target(batch["view0"]), method.target(batch["view1"])
    assert out["loss"].item() == pytest.approx(slow_byol_loss(p0, z1, p1, z0), rel=1e-5)
    assert 0.0 <= out["loss"].item() <= 8.0
    # and on random vectors, the raw building block: 4 + 2 * (NegCos(p0, z1) + NegCos(p1, z0))
    g = torch.Generator().manual_seed(3)
    vecs = [torch.randn(7, 5, generator=g) for _ in range(4)]
    lightly_form = 4 + 2 * (method.criterion(vecs[0], vecs[1]) + method.criterion(vecs[2], vecs[3]))
    assert lightly_form.item() == pytest.approx(slow_byol_loss(*vecs), rel=1e-5)


def test_target_is_an_ema_of_the_online_network_and_never_back_propagated(batch):
    torch.manual_seed(1)
    method = build_method("byol", tiny_unet, TINY)
    online = list(method.online_backbone.parameters()) + list(method.online_projection.parameters())
    target = list(method.target_backbone.parameters()) + list(method.target_projection.parameters())
    assert all(torch.equal(o, t) for o, t in zip(online, target))  # the target starts as the online network
    assert not any(t.requires_grad for t in target)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    before = [t.detach().clone() for t in target]
    method.forward_loss(batch, 0.4)["loss"].backward()
    assert all(t.grad is None for t in target)
    assert method.online_prediction.layers[0].weight.grad is not None  # the predictor is online-only and trains
    opt.step()
    method.on_train_batch_end(0.4)
    m = method.momentum_at(0.4)
    for old, new, o in zip(before, target, online):
        assert torch.allclose(new, m * old + (1 - m) * o.detach(), atol=1e-7, rtol=1e-6)
    assert sum(not torch.equal(new, old) for old, new in zip(before, target)) > len(target) // 2


@pytest.mark.parametrize("step", [0, 3, 7, 9])
def test_momentum_follows_lightly_cosine_schedule(step):
    method = build_method("byol", tiny_unet, {**TINY, "momentum_start": 0.99})
    assert method.momentum_at(step / 9) == pytest.approx(cosine_schedule(step, 10, 0.99, 1.0), abs=1e-12)


def test_online_encoder_transfers():
    method = build_method("byol", tiny_unet, TINY)
    with torch.no_grad():
        for p in method.target_backbone.parameters():
            p.add_(1.0)  # make the networks differ
    state = method.transferable_state()
    online = method.online_backbone.state_dict()
    assert all(torch.equal(state[f"encoder.{k}"], v) for k, v in online.items())


def test_paper_defaults_and_bad_momentum():
    method = build_method("byol", tiny_unet, {"input_size": SIZE})
    assert method.online_projection.layers[0].out_features == 4096
    assert method.online_prediction.layers[-1].out_features == 256
    assert method.momentum_at(0.0) == pytest.approx(0.996) and method.momentum_at(1.0) == 1.0
    with pytest.raises(ConfigError, match="momentum_start"):
        build_method("byol", tiny_unet, {**TINY, "momentum_start": 1.1})
