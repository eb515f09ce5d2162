"""Dice + CE and deep-supervision losses against slow per-class / per-pixel references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiossp.errors import ConfigError, DataError
from cardiossp.train.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights

SMOOTH = 1e-5


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_dice_loss(logits: np.ndarray, target: np.ndarray, batch_dice: bool) -> float:
    """1 - mean soft Dice over foreground classes, explicit loops over samples, classes and pixels."""
    p = _softmax(logits)
    b, c, h, w = p.shape
    scores = []
    groups = [list(range(b))] if batch_dice else [[i] for i in range(b)]
    for samples in groups:
        for k in range(1, c):  # do_bg=False
            inter = pred = gt = 0.0
            for i in samples:
                for y in range(h):
                    for x in range(w):
                        is_k = 1.0 if target[i, 0, y, x] == k else 0.0
                        inter += p[i, k, y, x] * is_k
                        pred += p[i, k, y, x]
                        gt += is_k
            scores.append((2 * inter + SMOOTH) / (pred + gt + SMOOTH))
    return 1.0 - sum(scores) / len(scores)


def ref_ce(logits: np.ndarray, target: np.ndarray) -> float:
    b, c, h, w = logits.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                z = logits[i, :, y, x]
                log_norm = math.log(sum(math.exp(v) for v in z))
                total += log_norm - z[int(target[i, 0, y, x])]
    return total / (b * h * w)


def _random_case(seed: int, b=3, c=4, h=9, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, c, (b, 1, h, w), generator=g)
    return logits, target


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_ce_matches_slow_reference(batch_dice, seed):
    logits, target = _random_case(seed)
    if seed == 2:
        target[target == 3] = 1  # a class absent from the target: smooth term decides its Dice
    loss = DiceCELoss(batch_dice=batch_dice)
    terms = loss.terms(logits, target)
    d_ref = ref_dice_loss(logits.numpy(), target.numpy(), batch_dice)
    ce_ref = ref_ce(logits.numpy(), target.numpy())
    assert terms["dice"].item() == pytest.approx(d_ref, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce_ref, rel=1e-5)
    assert loss(logits, target).item() == pytest.approx(d_ref + ce_ref, rel=1e-5)
    # (B, H, W) targets are accepted as well
    assert loss(logits, target[:, 0]).item() == pytest.approx(d_ref + ce_ref, rel=1e-5)


def test_weights_and_paper_variant():
    logits, target = _random_case(5)
    d_ref = ref_dice_loss(logits.numpy(), target.numpy(), batch_dice=False)
    ce_ref = ref_ce(logits.numpy(), target.numpy())
    paper = DiceCELoss(batch_dice=False, weight_ce=0.5, weight_dice=0.5)
    assert paper(logits, target).item() == pytest.approx(0.5 * d_ref + 0.5 * ce_ref, rel=1e-5)


def test_perfect_prediction_gives_zero_dice_and_ce():
    target = torch.randint(0, 4, (2, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    target[0, 0, 0, 0] = 0
    logits = torch.nn.functional.one_hot(target[:, 0], 4).permute(0, 3, 1, 2).double() * 60.0
    for batch_dice in (True, False):
        terms = DiceCELoss(batch_dice=batch_dice).terms(logits, target)
        assert abs(terms["dice"].item()) < 1e-6
        assert terms["ce"].item() < 1e-6
    # a confidently wrong prediction is far from zero
    wrong = torch.roll(logits, shifts=1, dims=1)
    assert DiceCELoss().terms(wrong, target)["dice"].item() > 0.9


def test_gradients_flow_and_half_precision_is_upcast():
    logits, target = _random_case(7)
    logits = logits.float().requires_grad_(True)
    DiceCELoss()(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    out = DiceCELoss()(logits.detach().to(torch.bfloat16), target)
    assert out.dtype == torch.float32


def test_bad_targets_are_rejected():
    logits, target = _random_case(0)
    with pytest.raises(DataError, match="classes"):
        DiceCELoss()(logits, target + 4)
    with pytest.raises(DataError, match="integer"):
        DiceCELoss()(logits, target.float())
    with pytest.raises(DataError, match="does not fit"):
        DiceCELoss()(logits, target[:, :, :4])
    with pytest.raises(ConfigError):
        DiceCELoss(weight_ce=0, weight_dice=0)


def test_deep_supervision_weights_sum_to_one_and_halve():
    w = deep_supervision_weights(6)
    assert sum(w) == pytest.approx(1.0)
    assert all(b / a == pytest.approx(0.5) for a, b in zip(w, w[1:]))
    assert w[0] == pytest.approx(32 / 63)
    nn_w = deep_supervision_weights(6, zero_lowest=True)
    assert nn_w[-1] == 0 and sum(nn_w) == pytest.approx(1.0) and nn_w[0] == pytest.approx(16 / 31)
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_loss_with_target_list_and_with_one_target():
    g = torch.Generator().manual_seed(11)
    full = torch.randint(0, 4, (2, 1, 16, 16), generator=g)
    outputs = [torch.randn(2, 4, 16 // 2**i, 16 // 2**i, generator=g, dtype=torch.float64) for i in range(3)]
    # nearest-exact downsampling by 2^i picks the pixel at 2^i * j + 2^(i-1)
    targets = [full, full[:, :, 1::2, 1::2], full[:, :, 2::4, 2::4]]
    inner = DiceCELoss()
    ds = DeepSupervisionLoss(inner, n_outputs=3)
    w = deep_supervision_weights(3)
    expected = sum(wi * inner(o, t) for wi, o, t in zip(w, outputs, targets))
    assert ds(outputs, targets).item() == pytest.approx(expected.item(), rel=1e-10)
    assert ds(outputs, full).item() == pytest.approx(expected.item(), rel=1e-10)
    terms = ds.terms(outputs, targets)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx((terms["dice"] + terms["ce"]).item(), rel=1e-10)
    # a single output (DS off) is scored against the full-resolution target only
    assert ds(outputs[0], targets).item() == pytest.approx(inner(outputs[0], full).item(), rel=1e-12)
    with pytest.raises(ConfigError, match="expected 3"):
        ds(outputs[:2], targets)


# ------------------------------------------------------------------ against nnU-Net v2's own losses
def _nnunet_dice_ce(batch_dice: bool = True, weight_ce: float = 1.0, weight_dice: float = 1.0):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=weight_ce, weight_dice=weight_dice, ignore_label=None,
                          dice_class=MemoryEfficientSoftDiceLoss)  # fmt: skip


def _loss_and_grad(loss_fn, logits):
    """(loss value, d loss / d each logits tensor) for a loss of a list of logits (or one)."""
    leaves = [x.clone().requires_grad_(True) for x in logits]
    value = loss_fn(leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize(("weight_ce", "weight_dice"), [(1.0, 1.0), (0.5, 0.5)])
@pytest.mark.parametrize("seed", [0, 2])
def test_dice_ce_is_nnunet_dc_and_ce_loss_plus_the_dice_offset(batch_dice, weight_ce, weight_dice, seed):
    """Ours reports the Dice term as ``1 - mean Dice``, nnU-Net as ``-mean Dice``: ours = nnU-Net's
    + 1 for the Dice term, + weight_dice for the total; cross-entropy and every gradient are equal.
    In float32, the precision training computes losses in (nnU-Net v2 sums the Dice terms in float32
    whatever the input's dtype, so float64 logits would differ by ~1e-8)."""
    logits, target = _random_case(seed, b=4, c=4, h=12, w=10)
    logits = logits.float()
    if seed == 2:
        target[target == 3] = 1  # a class absent from the target
    ours = DiceCELoss(batch_dice=batch_dice, weight_ce=weight_ce, weight_dice=weight_dice)
    theirs = _nnunet_dice_ce(batch_dice, weight_ce, weight_dice)
    terms = ours.terms(logits, target)
    assert terms["dice"].item() == pytest.approx(theirs.dc(logits, target).item() + 1.0, rel=1e-6, abs=1e-7)
    assert terms["ce"].item() == pytest.approx(theirs.ce(logits, target[:, 0]).item(), rel=1e-6)
    ours_value, ours_grad = _loss_and_grad(lambda x: ours(x[0], target), [logits])
    theirs_value, theirs_grad = _loss_and_grad(lambda x: theirs(x[0], target), [logits])
    assert ours_value.item() == pytest.approx(theirs_value.item() + weight_dice, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(ours_grad[0], theirs_grad[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("zero_lowest", [True, False])
def test_deep_supervision_loss_is_nnunet_deep_supervision_wrapper(zero_lowest):
    """Same weights (nnU-Net v2's: 1/2^i, lowest 0, normalised; or ours without the zero) in nnU-Net's
    ``DeepSupervisionWrapper``: ours = nnU-Net's + 1 (the Dice offset times weights summing to 1)."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    g = torch.Generator().manual_seed(5)
    full = torch.randint(0, 4, (3, 1, 16, 16), generator=g)
    outputs = [torch.randn(3, 4, 16 // 2**i, 16 // 2**i, generator=g) * 2 for i in range(4)]  # float32, as above
    targets = [full[:, :, (2**i) // 2 :: 2**i, (2**i) // 2 :: 2**i] for i in range(4)]  # nearest-exact
    if zero_lowest:  # nnU-Net v2's nnUNetTrainer._build_loss
        nn_weights = np.array([1 / 2**i for i in range(4)])
        nn_weights[-1] = 0
        nn_weights = nn_weights / nn_weights.sum()
        assert deep_supervision_weights(4, zero_lowest=True) == pytest.approx(list(nn_weights), rel=1e-15)
    ours = DeepSupervisionLoss(DiceCELoss(), n_outputs=4, zero_lowest=zero_lowest)
    theirs = DeepSupervisionWrapper(_nnunet_dice_ce(), ours.weights)
    ours_value, ours_grad = _loss_and_grad(lambda x: ours(x, targets), outputs)
    theirs_value, theirs_grad = _loss_and_grad(lambda x: theirs(x, targets), outputs)
    assert ours_value.item() == pytest.approx(theirs_value.item() + 1.0, rel=1e-6, abs=1e-7)
    assert ours(outputs, full).item() == pytest.approx(ours_value.item(), rel=1e-7)  # one target, downsampled
    for i, (a, b) in enumerate(zip(ours_grad, theirs_grad)):
        if zero_lowest and i == 3:
            assert a is None and b is None  # a weight of 0 is skipped, not multiplied by 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
