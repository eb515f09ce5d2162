"""The 2D nnU-Net U-Net (``PlainConvUNet`` of dynamic-network-architectures), built as nnU-Net v2 builds it.

de Mooij et al. 2024 §2.1 use nnU-Net's 2D configuration for cine MR (Isensee et al. 2021,
nnU-Net, Nat. Methods 18:203): 7 stages with 32, 64, 128, 256, 512, 512, 512 features, two
3x3 conv -> InstanceNorm(eps 1e-5, affine) -> LeakyReLU(0.01, inplace) per stage in encoder and
decoder, strided-conv downsampling (strides 1, 2, 2, ...), transposed-conv upsampling, conv bias,
no dropout, He initialisation (``InitWeights_He(1e-2)``), and deep supervision: one 1x1 seg conv per
decoder stage, so ``n_stages - 1`` outputs at full, 1/2, 1/4, ... resolution (256 -> 8 px for a
256x256 input). The keyword arguments below are exactly those of nnU-Net v2's
``get_network_from_plans`` for a 2D plan, so state-dict keys and shapes match nnU-Net checkpoints.

Shapes: input (B, in_channels, H, W) with H, W divisible by 2**(n_stages-1); output (B, num_classes,
H, W), or with deep supervision a list ``[(B, K, H, W), (B, K, H/2, W/2), ...]`` of n_stages-1 tensors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import MODELS, ModelSpec, register_model_type, unwrap

NORMS = {"instance": nn.InstanceNorm2d, "batch": nn.BatchNorm2d}


def unet_features(
    n_stages: int, base_features: int = 32, max_features: int = 512, width: float = 1.0
) -> list[int]:
    """nnU-Net's feature schedule ``min(base * 2**i, max)`` times a width multiplier (>= 1 channel)."""
    if n_stages < 2:
        raise ConfigError(f"a U-Net needs n_stages >= 2, got {n_stages}")
    if base_features < 1 or max_features < base_features:
        raise ConfigError(f"need 1 <= base_features <= max_features, got {base_features}, {max_features}")
    if width <= 0:
        raise ConfigError(f"width multiplier must be > 0, got {width}")
    return [max(1, int(round(min(base_features * 2**i, max_features) * width))) for i in range(n_stages)]


def build_unet(
    in_channels: int = 1,
    num_classes: int = 4,
    n_stages: int = 7,
    features: Sequence[int] | None = None,
    base_features: int = 32,
    max_features: int = 512,
    width: float = 1.0,
    norm: str = "instance",
    deep_supervision: bool = True,
    n_conv_per_stage: int = 2,
    n_conv_per_stage_decoder: int = 2,
) -> PlainConvUNet:
    """nnU-Net's 2D ``PlainConvUNet``; default = the paper's 7-stage 32..512 network, 4 classes.

    ``features`` (one entry per stage) overrides ``base_features``/``max_features``; ``width`` scales
    either (e.g. 0.5 for the half-width CPU presets). ``norm`` is ``"instance"`` (nnU-Net default) or
    ``"batch"`` (nnU-Net's nnUNetTrainerBN variant).
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
    if features is None:
        feats = unet_features(n_stages, base_features, max_features, width)
    else:
        if len(features) != n_stages:
            raise ConfigError(f"features has {len(features)} entries but n_stages is {n_stages}")
        if n_stages < 2:
            raise ConfigError(f"a U-Net needs n_stages >= 2, got {n_stages}")
        if any(int(f) < 1 for f in features) or width <= 0:
            raise ConfigError(f"features and width must be positive, got {list(features)}, width {width}")
        feats = [max(1, int(round(f * width))) for f in features]
    if n_conv_per_stage < 1 or n_conv_per_stage_decoder < 1:
        raise ConfigError("n_conv_per_stage and n_conv_per_stage_decoder must be >= 1")

    model = PlainConvUNet(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=feats,
        conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * n_stages,
        strides=[[1, 1]] + [[2, 2]] * (n_stages - 1),
        n_conv_per_stage=[n_conv_per_stage] * n_stages,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[n_conv_per_stage_decoder] * (n_stages - 1),
        conv_bias=True,
        norm_op=NORMS[norm],
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    model.apply(InitWeights_He(1e-2))
    return model


MODELS.register("unet")(build_unet)


def input_divisor(model: nn.Module) -> tuple[int, int]:
    """(dy, dx): H and W of the input must be multiples of these (product of encoder strides)."""
    strides = np.array(unwrap(model).encoder.strides, dtype=int)
    return tuple(int(v) for v in np.prod(strides, axis=0))


def deep_supervision_scales(model: nn.Module) -> list[list[float]]:
    """Target scales for the deep-supervision outputs, as nnU-Net computes them.

    ``1 / cumprod(strides)`` without the bottleneck: ``[[1, 1], [0.5, 0.5], ..., [1/32, 1/32]]`` for 7
    stages, one entry per output of the network in DS mode. Pass to ``augment.build_transforms``.
    """
    strides = np.array(unwrap(model).encoder.strides, dtype=float)
    return [[float(v) for v in row] for row in (1.0 / np.cumprod(strides, axis=0))[:-1]]


def _plain_unet_features(model: PlainConvUNet, x: Tensor) -> list[Tensor]:
    dy, dx = input_divisor(model)
    if x.shape[-2] % dy or x.shape[-1] % dx:
        raise ConfigError(
            f"input size {tuple(x.shape[-2:])} is not divisible by {(dy, dx)} (2**(n_stages-1)); crop or pad it"
        )
    return list(model.encoder(x))


register_model_type(
    PlainConvUNet,
    ModelSpec(
        # decoder.encoder.* are the same tensors as encoder.* (UNetDecoder keeps a reference to the
        # encoder, so nnU-Net state dicts list them twice); they belong to the encoder group.
        group_prefixes=(
            ("head", ("decoder.seg_layers.",)),
            ("encoder", ("encoder.", "decoder.encoder.")),
            ("decoder", ("decoder.",)),
        ),
        encoder_features=_plain_unet_features,
        bottleneck_dim=lambda m: m.encoder.output_channels[-1],
    ),
)
