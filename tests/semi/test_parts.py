"""The semi-supervised building blocks against slow references: masked Dice, confidence masks,
CutMix boxes (images *and* pseudo-labels), BCP's copy-paste mask and mixed loss, ramp-ups, the EMA
teacher, the strong view, and the feature-perturbation decode of every registered model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardiossp.config import ModelConfig
from cardiossp.models import MODELS, build_from_config, decode_features, encoder_features
from cardiossp.semi import EMATeacher, sigmoid_rampup, step_generator
from cardiossp.semi.bcp import largest_component_per_class, mix_loss
from cardiossp.semi.losses import confident_pseudo_labels, masked_ce, masked_dice_loss
from cardiossp.semi.perturb import copy_paste_mask, cutmix_boxes, mix, strong_intensity


def slow_masked_dice(probs, target, mask, smooth=1e-5):
    """UniMatch's / BCP's DiceLoss written with Python loops over classes and pixels."""
    b, c, h, w = probs.shape
    total = 0.0
    for k in range(c):
        inter = z = y = 0.0
        for i in range(b):
            for r in range(h):
                for s in range(w):
                    m = float(mask[i, r, s])
                    p = float(probs[i, k, r, s])
                    t = 1.0 if int(target[i, r, s]) == k else 0.0
                    inter += p * t * m
                    z += p * p * m
                    y += t * t * m
        total += 1 - (2 * inter + smooth) / (z + y + smooth)
    return total / c


def test_masked_dice_matches_the_slow_reference():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 4, 5, 6, generator=g).softmax(1)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    mask = (torch.rand(2, 5, 6, generator=g) > 0.4).float()
    assert masked_dice_loss(probs, target, mask).item() == pytest.approx(slow_masked_dice(probs, target, mask), 1e-6)
    # masked-out pixels do not matter: change them and the loss stays
    other = torch.where(mask.bool(), target, (target + 1) % 4)
    assert masked_dice_loss(probs, other, mask).item() == pytest.approx(masked_dice_loss(probs, target, mask).item())
    # a perfect one-hot prediction scores 0
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert masked_dice_loss(perfect, target, torch.ones_like(mask)).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_ce_is_the_mean_over_kept_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    mask = (torch.rand(2, 4, 4, generator=g) > 0.5).float()
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert masked_ce(logits, target, mask).item() == pytest.approx(ce[mask.bool()].mean().item(), 1e-6)


def test_confidence_mask_keeps_pixels_at_or_above_the_threshold():
    logits = torch.tensor([[[[3.0, 0.0]]], [[[0.0, 0.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 2)
    labels, conf, keep = confident_pseudo_labels(logits, threshold=0.9)
    p = math.exp(3) / (math.exp(3) + 1)
    assert labels.tolist() == [[[0, 0]]] and conf[0, 0, 0].item() == pytest.approx(p)
    assert keep.tolist() == [[[1.0, 0.0]]]  # 0.953 kept, 0.5 not
    assert not labels.requires_grad and not conf.requires_grad


def test_cutmix_boxes_follow_unimatch_ranges():
    g = torch.Generator().manual_seed(0)
    boxes = cutmix_boxes(4000, 64, 64, g, "cpu", p=0.5)
    area = boxes.sum((1, 2)) / (64 * 64)
    mixed = area > 0
    assert abs(mixed.float().mean().item() - 0.5) < 0.03  # p = 0.5
    assert area[mixed].min() >= 0.01 and area[mixed].max() <= 0.41  # 2-40 % (floored sides)
    for m in boxes[mixed][:200]:  # each is one axis-aligned rectangle
        rows, cols = torch.where(m.any(1))[0], torch.where(m.any(0))[0]
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        hh, ww = len(rows), len(cols)
        assert 0.3 * 0.8 <= hh / ww <= (1 / 0.3) * 1.25


def test_cutmix_mixes_images_and_pseudo_labels_by_the_same_box():
    g = torch.Generator().manual_seed(2)
    img = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 1, 8, 8)
    lab = torch.arange(3)[:, None, None].expand(3, 8, 8)
    box = cutmix_boxes(3, 8, 8, g, "cpu", p=1.0)
    mixed_img, mixed_lab = mix(img.roll(1, 0), img, box), mix(lab.roll(1, 0), lab, box)
    for i in range(3):
        j = (i - 1) % 3  # roll(1): sample i is mixed with sample i-1
        for r in range(8):
            for c in range(8):
                src = j if box[i, r, c] else i
                assert mixed_img[i, 0, r, c] == img[src, 0, r, c] and mixed_lab[i, r, c] == lab[src, r, c]


def test_copy_paste_mask_is_one_zero_box_of_two_thirds():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        m = copy_paste_mask(48, 30, g, "cpu")
        zero = m == 0
        rows, cols = torch.where(zero.any(1))[0], torch.where(zero.any(0))[0]
        assert len(rows) == 32 and len(cols) == 20 and int(zero.sum()) == 32 * 20
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_bcp_mix_loss_weights_the_two_regions():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    img_t, patch_t = torch.randint(0, 4, (2, 6, 6), generator=g), torch.randint(0, 4, (2, 6, 6), generator=g)
    mask = copy_paste_mask(6, 6, g, "cpu")[None].expand(2, 6, 6)
    dice, ce = mix_loss(logits, img_t, patch_t, mask, image_weight=0.5, patch_weight=1.0)
    probs = logits.softmax(1)
    ref_dice = 0.5 * slow_masked_dice(probs, img_t, mask) + slow_masked_dice(probs, patch_t, 1 - mask)
    cel = torch.nn.functional.cross_entropy(logits, img_t, reduction="none")
    cep = torch.nn.functional.cross_entropy(logits, patch_t, reduction="none")
    ref_ce = 0.5 * cel[mask.bool()].mean() + cep[~mask.bool()].mean()
    assert dice.item() == pytest.approx(ref_dice, 1e-5) and ce.item() == pytest.approx(ref_ce.item(), 1e-5)


def test_bcp_copy_paste_warm_start_mixes_labeled_halves_and_their_labels():
    """``warmup_copy_paste``: during the warm start the student sees labeled ``a`` outside the step's box and
    labeled ``b`` inside it, and the loss is (Dice + CE) / 2 of that image against ``a``'s / ``b``'s labels
    with both regions weighing 1 (slow reference); no teacher starts. Off, the warm start is the
    supervised loss of the whole labeled batch."""
    from cardiossp.semi import build_semi
    from cardiossp.semi.base import Step

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 1)

        def forward(self, x):
            self.seen = x.clone()
            return self.conv(x)

    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 12, 10), torch.randint(0, 4, (4, 1, 12, 10))
    lab, unl = {"image": x, "segmentation": y}, {"image": torch.randn(4, 1, 12, 10)}
    sup_calls = []

    def supervised(out, seg):
        sup_calls.append(out.shape[0])
        return {"loss": out.float().mean()}

    net = Recorder()
    method = build_semi("bcp", net, {"warmup_fraction": 0.5, "warmup_copy_paste": True})
    step = Step(progress=0.1, global_step=3, generator=step_generator(0, 3, torch.device("cpu")))
    terms = method.training_terms(net, supervised, lab, unl, step)
    mask = copy_paste_mask(12, 10, step_generator(0, 3, torch.device("cpu")), "cpu")
    box = mask == 0
    assert 0 < int(box.sum()) < mask.numel() and not sup_calls and not bool(method.teacher_started)
    expected = torch.where(box, x[2:4, 0], x[0:2, 0])[:, None]
    torch.testing.assert_close(net.seen, expected)
    target = torch.where(box, y[2:4, 0], y[0:2, 0])
    with torch.no_grad():
        logits = net.conv(expected)
    probs = logits.softmax(1)
    ref_dice = slow_masked_dice(probs, target, mask.expand(2, 12, 10)) + slow_masked_dice(probs, target,
                                                                                          box.expand(2, 12, 10))
    cel = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    ref_ce = cel[:, ~box].mean() + cel[:, box].mean()
    assert terms["loss"].item() == pytest.approx((ref_dice + ref_ce.item()) / 2, rel=1e-5)
    assert float(terms["sup"]) == pytest.approx(terms["loss"].item()) and float(terms["unsup"]) == 0

    plain = build_semi("bcp", net, {"warmup_fraction": 0.5})
    plain.training_terms(net, supervised, lab, unl, step)
    assert sup_calls == [4] and net.seen.shape[0] == 4


def test_largest_component_per_class_keeps_the_biggest_blob():
    lab = torch.zeros(1, 10, 10, dtype=torch.long)
    lab[0, 0:4, 0:4] = 1  # 16 px
    lab[0, 7:9, 7:9] = 1  # 4 px, dropped
    lab[0, 5, 0:3] = 2
    out = largest_component_per_class(lab, 4)
    assert int((out == 1).sum()) == 16 and int((out == 2).sum()) == 3 and out[0, 8, 8] == 0


def test_sigmoid_rampup():
    assert sigmoid_rampup(0.0, 0.5) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.5, 0.5) == 1.0 and sigmoid_rampup(0.9, 0.5) == 1.0
    assert sigmoid_rampup(0.2, 0.0) == 1.0
    values = [sigmoid_rampup(p, 0.8) for p in np.linspace(0, 1, 50)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert sigmoid_rampup(0.4, 0.8) == pytest.approx(math.exp(-5 * 0.25))


def test_ema_teacher_moves_only_by_ema():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.net.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, momentum=0.9)  # no step: the fixed momentum
    for t, b, s in zip(teacher.net.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    teacher.update(student, momentum=0.99, global_step=0)  # SSL4MIS: a = min(1 - 1/(step+1), m) = 0
    assert all(torch.equal(t, s) for t, s in zip(teacher.net.parameters(), student.parameters()))
    # a loss through the teacher's output cannot reach its parameters
    out = teacher(torch.randn(2, 1, 5, 5))
    assert not out.requires_grad
    teacher.train()
    assert not teacher.net.training  # always eval mode


def test_strong_view_keeps_geometry_and_is_seeded():
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, 8:16, 8:16] = 2.0
    a = strong_intensity(x, step_generator(0, 5, torch.device("cpu")))
    b = strong_intensity(x, step_generator(0, 5, torch.device("cpu")))
    c = strong_intensity(x, step_generator(0, 6, torch.device("cpu")))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and not torch.equal(a, x)
    # the bright square stays where it was (photometric only): its centre is still the brightest region
    assert (a[:, 0, 10:14, 10:14].mean((1, 2)) > a[:, 0, 24:28, 24:28].mean((1, 2))).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_decode_of_encoder_features_is_the_forward(name):
    torch.manual_seed(0)
    options = {"depth": 18} if name == "resnet_unet" else {}
    cfg = ModelConfig(name=name, n_stages=4, base_features=8, max_features=32, options=options)
    model = build_from_config(cfg, 4).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = decode_features(model, encoder_features(model, x), x.shape[-2:])
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    out = out if isinstance(out, (list, tuple)) else [out]
    assert len(ref) == len(out) and all(torch.allclose(a, b) for a, b in zip(ref, out))


@pytest.mark.parametrize("name", ["mean-teacher", "bcp", "unimatch"])
def test_teacher_and_pseudo_labels_get_no_gradient(name):
    """One step of each method on a tiny U-Net: the loss reaches the student only; an EMA teacher
    has no gradient and afterwards equals the EMA of its old weights and the updated student."""
    from cardiossp.semi import build_semi
    from cardiossp.semi.base import Step
    from cardiossp.train.losses import DeepSupervisionLoss, DiceCELoss

    torch.manual_seed(0)
    cfg = ModelConfig(n_stages=3, base_features=4, max_features=16)
    student = build_from_config(cfg, 4)
    options = {"bcp": {"warmup_fraction": 0.0}, "unimatch": {"threshold": 0.0}}.get(name, {})
    method = build_semi(name, student, options)
    sup = DeepSupervisionLoss(DiceCELoss(), 2).terms
    lab = {"image": torch.randn(4, 1, 32, 32), "segmentation": torch.randint(0, 4, (4, 1, 32, 32))}
    unl = {"image": torch.randn(4, 1, 32, 32)}
    step = Step(progress=0.5, global_step=10, generator=step_generator(0, 10, torch.device("cpu")))
    terms = method.training_terms(student, sup, lab, unl, step)
    assert torch.isfinite(terms["loss"]) and float(terms["unsup"]) > 0
    terms["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    teacher = getattr(method, "teacher", None)
    if teacher is None:
        return
    assert all(p.grad is None for p in teacher.parameters())
    before = [p.clone() for p in teacher.net.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.sub_(0.01 * p.grad)
    method.on_train_batch_end(student, 10)
    a = min(1 - 1 / 11, 0.99) if name == "mean-teacher" else 0.99
    for t, b, s in zip(teacher.net.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, a * b + (1 - a) * s)
