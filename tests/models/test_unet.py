"""The nnU-Net 2D U-Net: shapes, nnU-Net key compatibility, parameter groups, helpers."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.helper import get_matching_instancenorm
from torch import nn

from cardiossp.errors import ConfigError
from cardiossp.models import (
    MODELS,
    bottleneck_dim,
    build_model,
    classify_keys,
    deep_supervision_scales,
    encoder_features,
    key_groups,
    model_info,
    parameter_groups,
    pooled_bottleneck,
    set_deep_supervision,
)

TINY = dict(n_stages=4, base_features=8, max_features=32)



def _nnunet_way(n_stages: int, features: list[int], num_classes: int, deep_supervision: bool) -> PlainConvUNet:
    """A 2D PlainConvUNet exactly as nnU-Net v2's get_network_from_plans builds one for a 2D plan."""
    conv_op = nn.Conv2d
    net = PlainConvUNet(
        input_channels=1,
        n_stages=n_stages,
        features_per_stage=features,
        conv_op=conv_op,
        kernel_sizes=[[3, 3]] * n_stages,
        strides=[[1, 1]] + [[2, 2]] * (n_stages - 1),
        n_conv_per_stage=[2] * n_stages,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
        conv_bias=True,
        norm_op=get_matching_instancenorm(conv_op),
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    net.apply(net.initialize)
    return net


def test_unet_is_registered():
    assert "unet" in MODELS.names()
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no-such-net")


def test_default_matches_nnunet_state_dict_keys_and_shapes():
    ours = build_model("unet")
    ref = _nnunet_way(7, [32, 64, 128, 256, 512, 512, 512], 4, True)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    # nnU-Net's checkpoint loads strictly into our model
    ours.load_state_dict(ref_sd, strict=True)
    assert ours.encoder.output_channels == [32, 64, 128, 256, 512, 512, 512] and bottleneck_dim(ours) == 512
    norm = ours.encoder.stages[0][0].convs[0].norm
    act = ours.encoder.stages[0][0].convs[0].nonlin
    assert isinstance(norm, nn.InstanceNorm2d) and norm.eps == 1e-5 and norm.affine
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01 and act.inplace
    assert ours.encoder.stages[0][0].convs[0].conv.bias is not None
    assert ours.encoder.stages[0][0].convs[0].conv.kernel_size == (3, 3)
    assert ours.encoder.stages[1][0].convs[0].conv.stride == (2, 2)


@pytest.mark.parametrize("ds", [True, False])
def test_output_shapes_seven_stages(ds):
    model = build_model("unet", width=0.125, deep_supervision=ds)  # 4..64 features, same topology
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        out = model(x)
    if ds:
        assert isinstance(out, list) and len(out) == 6
        assert [tuple(o.shape) for o in out] == [(2, 4, 128 // 2**i, 128 // 2**i) for i in range(6)]
    else:
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 4, 128, 128)
    assert deep_supervision_scales(model) == [[1 / 2**i] * 2 for i in range(6)]


def test_set_deep_supervision_toggles_outputs_and_same_full_res():
    torch.manual_seed(0)
    model = build_model("unet", **TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ds_out = model(x)
        set_deep_supervision(model, False)
        single = model(x)
    assert isinstance(ds_out, list) and len(ds_out) == 3
    assert torch.allclose(single, ds_out[0], rtol=1e-5, atol=1e-6)


def test_width_and_features_and_bad_config():
    assert build_model("unet", width=0.5).encoder.output_channels == [16, 32, 64, 128, 256, 256, 256]
    m = build_model("unet", n_stages=3, features=(4, 8, 16), num_classes=2, norm="batch")
    assert m.encoder.output_channels == [4, 8, 16]
    assert isinstance(m.encoder.stages[0][0].convs[0].norm, nn.BatchNorm2d)
    assert m.decoder.seg_layers[0].out_channels == 2
    with pytest.raises(ConfigError, match="norm"):
        build_model("unet", norm="group")
    with pytest.raises(ConfigError, match="features has 2 entries"):
        build_model("unet", n_stages=3, features=(4, 8))
    with pytest.raises(ConfigError, match="n_stages"):
        build_model("unet", n_stages=1)


def test_parameter_groups_partition_all_parameters():
    model = build_model("unet", **TINY)
    groups = parameter_groups(model)
    names = [n for n, _ in model.named_parameters()]
    flat = [n for g in ("encoder", "decoder", "head") for n in groups[g]]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
    assert all(n.startswith("encoder.") for n in groups["encoder"])
    assert all(n.startswith("decoder.seg_layers.") for n in groups["head"])
    assert all(n.startswith("decoder.") and "seg_layers" not in n for n in groups["decoder"])
    assert any("transpconvs" in n for n in groups["decoder"])
    assert len(groups["head"]) == 2 * 3  # weight + bias of 3 seg layers
    info = model_info(model)
    assert info["total"] == sum(p.numel() for p in model.parameters())
    assert info["encoder"] + info["decoder"] + info["head"] == info["total"] == info["trainable"]


def test_state_dict_key_groups_cover_duplicated_encoder_keys():
    model = build_model("unet", **TINY)
    groups = key_groups(model)
    assert sum(len(v) for v in groups.values()) == len(model.state_dict())
    assert any(k.startswith("decoder.encoder.") for k in groups["encoder"])
    with pytest.raises(ConfigError, match="match no parameter group"):
        classify_keys(["encoder.a", "projector.0.weight"], (("encoder", ("encoder.",)),))


def test_encoder_features_and_bottleneck():
    model = build_model("unet", **TINY)
    x = torch.randn(2, 1, 32, 32)
    feats = encoder_features(model, x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    assert bottleneck_dim(model) == 32
    assert tuple(pooled_bottleneck(model, x).shape) == (2, 32)
    with pytest.raises(ConfigError, match="divisible"):
        encoder_features(model, torch.randn(1, 1, 30, 32))


def test_tiny_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("unet", **TINY)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    loss = sum(o.square().mean() for o in out)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = build_model("unet", **TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
