"""SSP losses and schedules against slow, obviously-correct references.

PCL: Zeng et al. 2021 (arXiv 2106.09157); NT-Xent: Chen et al. 2020 (SimCLR);
DINO: Caron et al. 2021; MIM loss: de Mooij et al. 2024.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NTXentLoss
from lightly.utils.scheduler import cosine_schedule

from cardiossp.errors import ConfigError
from cardiossp.ssp import pcl as pcl_mod
from cardiossp.ssp import schedules
from cardiossp.ssp.mim import masked_mse
from cardiossp.ssp.pcl import PositionalContrastiveLoss, positive_mask
from cardiossp.ssp.views import random_patch_mask


# ----------------------------------------------------------------------------- references
def slow_pcl(z0, z1, pos, tau, thr):
    """Double loop over anchors and candidates, plain Python floats."""
    n = len(z0)
    z = [F.normalize(v, dim=0) for v in list(z0) + list(z1)]
    p = [float(x) for x in list(pos) + list(pos)]
    total = 0.0
    for i in range(2 * n):
        twin = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        positives = [j for j in range(2 * n) if j != i and (j == twin or abs(p[i] - p[j]) < thr)]
        total += -sum(float(z[i] @ z[j]) / tau - math.log(denom) for j in positives) / len(positives)
    return total / (2 * n)


def slow_ntxent(z0, z1, tau):
    """SimCLR NT-Xent: anchor i's only positive is its twin; denominator all k != i."""
    return slow_pcl(z0, z1, torch.zeros(len(z0)), tau, thr=0.0)


def slow_dino(teacher, student, center, t_temp, s_temp):
    """Mean over (teacher view t, student view s != t, sample b) of -sum p_t log p_s."""
    terms = []
    for ti, t in enumerate(teacher):
        for si, s in enumerate(student):
            if si == ti:
                continue
            for b in range(t.shape[0]):
                pt = torch.softmax((t[b] - center) / t_temp, 0)
                ls = torch.log_softmax(s[b] / s_temp, 0)
                terms.append(-(pt * ls).sum().item())
    return sum(terms) / len(terms)


def make_pcl_inputs(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z1 = z0 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = torch.tensor([0.0, 0.05, 0.12, 0.5, 0.55, 1.0], dtype=torch.float64)[:n]
    return z0, z1, pos


# ------------------------------------------------------------------------------------ PCL
@pytest.mark.parametrize("thr", [0.0, 0.1, 0.3, 1.0])
def test_pcl_matches_double_loop(thr):
    z0, z1, pos = make_pcl_inputs()
    got = PositionalContrastiveLoss(temperature=0.1, threshold=thr)(z0, z1, pos).item()
    assert got == pytest.approx(slow_pcl(z0, z1, pos, 0.1, thr), rel=1e-6)


def test_pcl_positive_mask_by_hand():
    # 3 slices at positions 0.0, 0.05, 0.5 -> candidates 0..2 (view0), 3..5 (view1)
    pos = torch.tensor([0.0, 0.05, 0.5])
    cand = torch.cat([pos, pos])
    self_idx = torch.arange(6)
    twin_idx = torch.tensor([3, 4, 5, 0, 1, 2])
    got = positive_mask(cand, cand, self_idx, twin_idx, threshold=0.1)
    expected = torch.tensor(
        [
            [0, 1, 0, 1, 1, 0],
            [1, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 1, 0, 0],
            [0, 0, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got, expected)
    # threshold 0: only the twin
    assert torch.equal(positive_mask(cand, cand, self_idx, twin_idx, 0.0), F.one_hot(twin_idx, 6).bool())


def test_pcl_threshold_zero_is_lightly_ntxent():
    z0, z1, pos = make_pcl_inputs(seed=3)
    ours = PositionalContrastiveLoss(temperature=0.2, threshold=0.0)(z0, z1, pos)
    ref = NTXentLoss(temperature=0.2)(z0, z1)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_pcl_gathered_path_averages_to_full_batch(monkeypatch):
    """Simulate 2 processes: the mean of the per-rank losses equals the 1-process loss."""
    z0, z1, _ = make_pcl_inputs(n=6, seed=5)
    pos = torch.tensor([0.0, 0.3, 0.32, 0.6, 0.61, 0.95], dtype=torch.float64)
    loss_fn = PositionalContrastiveLoss(temperature=0.1, threshold=0.1)
    full = loss_fn(z0, z1, pos).item()
    per_rank = []
    for rank in range(2):
        gathered = iter([F.normalize(z0, dim=1), F.normalize(z1, dim=1), pos.float()])

        def fake_gather(x, rank=rank, gathered=gathered):
            parts = list(next(gathered).chunk(2))
            assert parts[rank].shape == x.shape
            parts[rank] = x
            return tuple(parts)

        monkeypatch.setattr(pcl_mod.ldist, "world_size", lambda: 2)
        monkeypatch.setattr(pcl_mod.ldist, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(pcl_mod.ldist, "gather", fake_gather)
        sl = slice(3 * rank, 3 * rank + 3)
        per_rank.append(loss_fn(z0[sl], z1[sl], pos[sl]).item())
    assert sum(per_rank) / 2 == pytest.approx(full, rel=1e-6)
    assert per_rank[0] != pytest.approx(per_rank[1])  # the split is not trivially symmetric


def test_pcl_gradient_flows_and_args_checked():
    z0, z1, pos = make_pcl_inputs()
    z0.requires_grad_(True)
    PositionalContrastiveLoss(0.1, 0.1)(z0, z1, pos).backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        PositionalContrastiveLoss(temperature=0.0)
    with pytest.raises(ConfigError):
        PositionalContrastiveLoss(threshold=-0.1)
    with pytest.raises(ValueError):
        PositionalContrastiveLoss()(z0, z1, pos[:3])


# ---------------------------------------------------------------- lightly losses we rely on
def test_lightly_ntxent_matches_reference():
    z0, z1, _ = make_pcl_inputs(seed=7)
    assert NTXentLoss(temperature=0.1)(z0, z1).item() == pytest.approx(slow_ntxent(z0, z1, 0.1), rel=1e-6)


def test_lightly_dino_loss_matches_reference_with_centre():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 7, generator=g, dtype=torch.float64) for _ in range(2)]
    student = [torch.randn(3, 7, generator=g, dtype=torch.float64) for _ in range(4)]
    loss_fn = DINOLoss(output_dim=7, student_temp=0.1, center_momentum=0.9).double()
    got = loss_fn(teacher, student, teacher_temp=0.03).item()
    assert got == pytest.approx(slow_dino(teacher, student, torch.zeros(7), 0.03, 0.1), rel=1e-6)
    # centre = 0.9 * 0 + 0.1 * mean over teacher views and samples; used by the next call
    centre = 0.1 * torch.stack(teacher).mean(dim=(0, 1))
    assert torch.allclose(loss_fn.center.flatten(), centre)
    got2 = loss_fn(teacher, student, teacher_temp=0.04).item()
    assert got2 == pytest.approx(slow_dino(teacher, student, centre, 0.04, 0.1), rel=1e-6)


# ------------------------------------------------------------------------------------ MIM
def test_masked_mse_matches_loop_and_ignores_visible_pixels():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 1, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 1, 8, 8, generator=g)
    mask = torch.rand(2, 1, 8, 8, generator=g) < 0.6
    got = masked_mse(pred, target, mask)
    vals = [(pred[tuple(i)] - target[tuple(i)]).item() ** 2 for i in mask.nonzero()]
    assert got.item() == pytest.approx(sum(vals) / len(vals), rel=1e-6)

    # changing prediction and target on visible pixels (even to NaN) changes nothing
    pred2 = pred.detach().clone()
    pred2[~mask] = float("nan")
    target2 = target.clone()
    target2[~mask] = 1e6
    assert masked_mse(pred2, target2, mask).item() == pytest.approx(got.item(), rel=1e-6)
    # ... and changing a masked pixel does change it
    target3 = target.clone()
    target3[tuple(mask.nonzero()[0])] += 1.0
    assert masked_mse(pred, target3, mask).item() != pytest.approx(got.item())

    got.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask] != 0)
    with pytest.raises(ValueError):
        masked_mse(pred, target, torch.zeros_like(mask))


def test_random_patch_mask_exact_ratio_and_patch_aligned():
    torch.manual_seed(0)
    m = random_patch_mask((32, 48), (4, 8), 0.75)
    assert m.shape == (1, 32, 48) and m.dtype == torch.bool
    grid = m[0].reshape(8, 4, 6, 8).permute(0, 2, 1, 3).reshape(8, 6, 32)
    assert torch.all(grid.all(-1) | ~grid.any(-1))  # every patch fully masked or fully visible
    assert int(grid[..., 0].sum()) == round(0.75 * 48)
    assert not torch.equal(m, random_patch_mask((32, 48), (4, 8), 0.75))  # random
    with pytest.raises(ConfigError):
        random_patch_mask((30, 32), (4, 4), 0.75)


# ------------------------------------------------------------------------------ schedules
def test_cosine_endpoints_and_lightly_agreement():
    assert schedules.cosine(0.0, 0.1, 0.0) == pytest.approx(0.1)
    assert schedules.cosine(1.0, 0.1, 0.0) == pytest.approx(0.0)
    assert schedules.cosine(0.5, 0.1, 0.0) == pytest.approx(0.05)
    for step in range(11):
        assert schedules.cosine(step / 10, 0.3, 0.01) == pytest.approx(cosine_schedule(step, 11, 0.3, 0.01))


def test_warmup_cosine():
    f = lambda p: schedules.warmup_cosine(p, base=0.0075, final=1e-6, warmup_fraction=0.1)  # noqa: E731
    assert f(0.0) == 0.0
    assert f(0.05) == pytest.approx(0.0075 / 2)
    assert f(0.1) == pytest.approx(0.0075)
    assert f(1.0) == pytest.approx(1e-6)
    assert f(0.55) == pytest.approx((0.0075 + 1e-6) / 2)
    assert schedules.warmup_cosine(0.3, 1.0, 0.0, 0.0) == pytest.approx(schedules.cosine(0.3, 1.0, 0.0))


def test_teacher_temperature_and_ema_momentum():
    t = schedules.teacher_temperature
    assert t(0.0, 0.02, 0.04, 0.3) == pytest.approx(0.02)
    assert t(0.15, 0.02, 0.04, 0.3) == pytest.approx(0.03)
    assert t(0.3, 0.02, 0.04, 0.3) == pytest.approx(0.04)
    assert t(1.0, 0.02, 0.04, 0.3) == pytest.approx(0.04)
    assert t(0.0, 0.02, 0.04, 0.0) == pytest.approx(0.04)
    assert schedules.ema_momentum(0.0) == pytest.approx(0.996)
    assert schedules.ema_momentum(1.0) == pytest.approx(1.0)
    assert schedules.ema_momentum(0.5) == pytest.approx(0.998)
    ms = [schedules.ema_momentum(p / 20) for p in range(21)]
    assert all(a <= b for a, b in zip(ms, ms[1:]))


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_schedules_reject_progress_outside_unit_interval(bad):
    with pytest.raises(ValueError):
        schedules.cosine(bad, 1.0, 0.0)
    with pytest.raises(ValueError):
        schedules.teacher_temperature(bad)
