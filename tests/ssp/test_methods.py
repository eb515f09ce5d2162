"""Every registered SSP method on a tiny nnU-Net PlainConvUNet.

Images are synthetic: bright discs of random size/position on noise, z-scored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from torch.utils.data import default_collate

from cardiossp.errors import ConfigError, DataError
from cardiossp.ssp import SSP_METHODS, build_method
from cardiossp.ssp.schedules import ema_momentum
from cardiossp.ssp.views import FallbackAugment

SIZE = 32
N_STEPS = 20


def tiny_unet(num_classes: int, deep_supervision: bool) -> nn.Module:
    return PlainConvUNet(
        input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=nn.Conv2d,
        kernel_sizes=3, strides=[1, 2, 2, 2], n_conv_per_stage=2, num_classes=num_classes,
        n_conv_per_stage_decoder=2, conv_bias=True, norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
    )  # fmt: skip


TINY_CFG = {
    "simclr": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "pcl": {"proj_hidden_dim": 32, "proj_output_dim": 16, "threshold": 0.2},
    "dino": {
        "head_hidden_dim": 32, "head_bottleneck_dim": 16, "head_output_dim": 64,
        "epochs": 4, "warmup_teacher_temp_epochs": 1,
    },
    "mim": {},
    "position": {"hidden_dim": 32},
    "byol": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
}  # fmt: skip


def disc_sample(rng: np.random.Generator, i: int, n: int, size: int = 40) -> dict:
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(0.0, 0.2, (size, size))
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(10, size - 10, 2)
        r = rng.uniform(3, 9)
        img += rng.uniform(0.5, 2.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
    img = (img - img.mean()) / img.std()
    return {"image": torch.from_numpy(img[None].astype(np.float32)), "position": i / (n - 1), "subject": f"s{i}"}



@pytest.fixture(scope="module")
def samples() -> list[dict]:
    rng = np.random.default_rng(0)
    return [disc_sample(rng, i, 8) for i in range(8)]


def make(name: str, **extra) -> nn.Module:
    cfg = {"input_size": SIZE, **TINY_CFG[name], **extra}
    return build_method(name, tiny_unet, cfg)


def batch_of(method, samples) -> dict:
    return default_collate([method.make_views(s) for s in samples])


def test_every_registered_method_has_a_tiny_config():
    assert set(SSP_METHODS.names()) == set(TINY_CFG)


@pytest.mark.parametrize("name", sorted(TINY_CFG))
def test_method_trains_and_transfers(name, samples):
    torch.manual_seed(0)
    method = make(name)
    assert method.transfers in ("encoder", "encoder+decoder")
    before = method.transferable_state()
    batch = batch_of(method, samples)  # fixed batch: the loss must go down on it
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(N_STEPS):
        progress = step / (N_STEPS - 1)
        out = method.forward_loss(batch, progress)
        assert out["loss"].ndim == 0 and all(isinstance(v, float) for k, v in out.items() if k != "loss")
        opt.zero_grad()
        out["loss"].backward()
        method.on_after_backward(step // 5)
        opt.step()
        method.on_train_batch_end(progress)
        losses.append(out["loss"].item())
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    # transfer into a fresh fine-tuning model (4 classes, deep supervision)
    state = method.transferable_state()
    seg = tiny_unet(4, True)
    fresh = {k: v.clone() for k, v in seg.state_dict().items()}
    if method.transfers == "encoder":
        expected = {k for k in fresh if k.startswith(("encoder.", "decoder.encoder."))}
    else:
        expected = {k for k in fresh if not k.startswith("decoder.seg_layers.")}
    assert set(state) == expected
    missing, unexpected = seg.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == set(fresh) - expected

    for key, param in seg.named_parameters():  # aliases (decoder.encoder.*) appear once
        if key in state:
            assert torch.equal(param, state[key]), key
            assert not torch.equal(param, fresh[key]), f"{key} still equals the fresh init"
            assert not torch.equal(state[key], before[key]), f"{key} was not trained"
        else:  # seg layers, and the decoder for encoder-only methods: untouched
            assert torch.equal(param, fresh[key]), key
    if name == "mim":
        assert any(k.startswith("decoder.stages.") for k in state)
        assert any(k.startswith("decoder.seg_layers.") for k in missing)


def test_view_shapes_and_passthrough(samples):
    s = samples[3]
    v = make("simclr").make_views(s)
    assert v["view0"].shape == v["view1"].shape == (1, SIZE, SIZE)
    assert not torch.equal(v["view0"], v["view1"])
    assert v["position"].item() == pytest.approx(s["position"]) and v["subject"] == "s3"
    v = make("dino").make_views(s)
    assert {k for k in v if k.startswith("global")} == {"global0", "global1"}
    assert all(v[f"local{i}"].shape == (1, SIZE // 2, SIZE // 2) for i in range(6))
    assert v["global0"].shape == (1, SIZE, SIZE) and "local6" not in v
    v = make("mim").make_views(s)
    assert v["image"].shape == v["mask"].shape == (1, SIZE, SIZE) and v["mask"].dtype == torch.bool
    assert v["mask"].float().mean().item() == pytest.approx(0.75)  # 64 patches of 4x4, 48 masked


def test_bad_samples_name_the_subject():
    method = make("simclr")
    with pytest.raises(DataError, match="subject bad"):
        method.make_views({"image": torch.zeros(2, 8, 8), "position": 0.5, "subject": "bad"})
    with pytest.raises(DataError, match="position"):
        method.make_views({"image": torch.zeros(1, 8, 8), "position": 1.5, "subject": "bad"})


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown SSP method"):
        build_method("byol-typo", tiny_unet, {})
    with pytest.raises(ConfigError, match="temprature"):
        build_method("simclr", tiny_unet, {"temprature": 0.1})
    with pytest.raises(ConfigError, match="transfer_from"):
        make("dino", transfer_from="both")
    with pytest.raises(ConfigError, match=".encoder"):
        build_method("simclr", lambda nc, ds: nn.Conv2d(1, nc, 3), {"input_size": SIZE})


def test_injected_augmentation_is_used(samples):
    calls = []

    def aug(d):
        calls.append(d["image"].shape)
        return FallbackAugment(SIZE)(d)

    method = build_method("pcl", tiny_unet, {"input_size": SIZE, **TINY_CFG["pcl"]}, augment=aug)
    method.make_views(samples[0])
    assert calls == [(1, 40, 40), (1, 40, 40)]


def test_dino_teacher_is_ema_of_student(samples):
    torch.manual_seed(1)
    method = make("dino")
    s_params = list(method.student_backbone.parameters()) + list(method.student_head.parameters())
    t_params = list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())
    assert all(torch.equal(s, t) for s, t in zip(s_params, t_params))  # teacher starts as the student
    assert not any(t.requires_grad for t in t_params)

    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    batch = batch_of(method, samples)
    teacher_old = [t.detach().clone() for t in t_params]
    method.forward_loss(batch, 0.3)["loss"].backward()
    assert all(t.grad is None for t in t_params)
    method.on_after_backward(epoch=2)
    opt.step()
    method.on_train_batch_end(0.3)
    m = ema_momentum(0.3, 0.996, 1.0)
    assert method.momentum_at(0.3) == pytest.approx(m)
    moved = 0
    for old, new, s in zip(teacher_old, t_params, s_params):
        assert torch.allclose(new, m * old + (1 - m) * s.detach(), atol=1e-7, rtol=1e-6)
        moved += not torch.equal(new, old)
    assert moved > len(t_params) // 2


def test_dino_last_layer_frozen_in_first_epoch(samples):
    method = make("dino")
    batch = batch_of(method, samples)
    last = method.student_head.last_layer
    for epoch, frozen in ((0, True), (1, False)):
        method.zero_grad(set_to_none=True)
        method.forward_loss(batch, 0.0)["loss"].backward()
        method.on_after_backward(epoch)
        assert (last.weight_v.grad is None) == frozen
        assert method.student_head.layers[0].weight.grad is not None  # rest of the head trains


def test_dino_transfer_from_teacher(samples):
    method = make("dino", transfer_from="teacher")
    with torch.no_grad():
        for p in method.student_backbone.parameters():
            p.add_(1.0)  # make student and teacher differ
    state = method.transferable_state()
    t_state = method.teacher_backbone.state_dict()
    assert all(torch.equal(state[f"encoder.{k}"], v) for k, v in t_state.items())


def test_mim_masks_input_with_zero_after_augmentation(samples):
    method = make("mim")
    batch = batch_of(method, samples)
    seen = {}
    method.net.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    out = method.forward_loss(batch, 0.5)
    x, image, mask = seen["x"], batch["image"], batch["mask"]
    assert torch.all(x[mask] == 0.0) and torch.equal(x[~mask], image[~mask])
    assert out["mask_fraction"] == pytest.approx(0.75)


@pytest.mark.parametrize("name", sorted(TINY_CFG))
def test_state_dict_round_trip(name):
    """Checkpoints hold the whole method (DINO: teacher and centre too) and load back."""
    a, b = make(name), make(name)
    state = a.state_dict()
    b.load_state_dict(state)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
    if name == "dino":
        assert "criterion.center" in state and any(k.startswith("teacher_head.") for k in state)


def test_fallback_augmentation_when_augment_module_missing(monkeypatch, samples):
    import sys

    from cardiossp.ssp.views import Resize, default_augment

    monkeypatch.setitem(sys.modules, "cardiossp.data.augment", None)  # import -> ImportError
    aug = default_augment("paper", SIZE)
    assert isinstance(aug, FallbackAugment)
    out = aug({"image": samples[0]["image"].clone()})["image"]
    assert out.shape == (1, SIZE, SIZE) and not torch.equal(out, samples[0]["image"][:, :SIZE, :SIZE])
    assert isinstance(default_augment("none", SIZE), Resize)
    assert default_augment("none", SIZE)({"image": samples[0]["image"]})["image"].shape == (1, SIZE, SIZE)


@pytest.mark.parametrize("name", sorted(TINY_CFG))
def test_view_maker_pickles_without_the_network(name, samples):
    """DataLoader workers (spawn) receive ``method.view_maker``: small and picklable."""
    import pickle

    method = make(name)
    blob = pickle.dumps(method.view_maker)
    assert len(blob) < 0.5 * len(pickle.dumps(method.state_dict()))
    views = pickle.loads(blob)(samples[0])
    assert set(views) == set(method.make_views(samples[0]))
