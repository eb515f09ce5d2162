"""A U-Net with a torchvision ResNet-18/34/50 encoder (Ronneberger et al. 2015, U-Net,
https://arxiv.org/abs/1505.04597; He et al. 2016, ResNet; the layout of
segmentation_models_pytorch's ``Unet`` and of TernausNet, Iglovikov & Shvets 2018).

Encoder: ``ResNetEncoder`` (torchvision names, 1-channel ``conv1``). Decoder: five blocks; block i
upsamples x2 (nearest), concatenates the matching encoder skip (layer3, layer2, layer1, stem; the
last block has none, it brings the stem's H/2 back to H) and applies two 3x3 conv -> BatchNorm ->
ReLU. Batch norm throughout, so the decoder matches an encoder that may carry ImageNet statistics.

Deep supervision, as nnU-Net does it (Isensee et al. 2021) so that the training recipe of de Mooij et al.
2024 (Dice + CE over the DS outputs, weights 1/2^i) applies unchanged and a comparison with ``unet``
differs only in the architecture: one 1x1 conv per decoder block in ``decoder.seg_layers`` (always
built, so weights load whatever the flag), giving outputs at H, H/2, H/4, H/8, H/16 when
``deep_supervision`` is on, only the full-resolution one otherwise (the plain smp-style U-Net).

Shapes: input (B, in_channels, H, W) with H, W divisible by 32; output (B, num_classes, H, W) or
the list ``[(B, K, H, W), (B, K, H/2, W/2), ..., (B, K, H/16, W/16)]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import MODELS, ModelSpec, register_model_type
from .resnet_encoder import ResNetEncoder, build_resnet_encoder

DECODER_CHANNELS = (256, 128, 64, 32, 16)
DIVISOR = 32


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """x2 nearest upsampling, concatenation with the skip (if any), two conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class ResNetUNetDecoder(nn.Module):
    """Blocks from the bottleneck up; ``seg_layers[i]`` is the 1x1 head after block i (lowest first,
    as in nnU-Net's ``UNetDecoder``); ``deep_supervision`` switches the extra outputs on/off."""

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int], num_classes: int,
                 deep_supervision: bool):  # fmt: skip
        super().__init__()
        skips = list(encoder_channels[-2::-1]) + [0]  # layer3, layer2, layer1, stem, none
        if len(channels) != len(skips) or any(int(c) < 1 for c in channels):
            raise ConfigError(f"decoder_channels needs {len(skips)} positive widths, got {list(channels)}")
        cins = [encoder_channels[-1]] + list(channels[:-1])
        self.blocks = nn.ModuleList(DecoderBlock(ci, s, int(co)) for ci, s, co in zip(cins, skips, channels))
        self.seg_layers = nn.ModuleList(nn.Conv2d(int(c), num_classes, 1) for c in channels)
        self.deep_supervision = deep_supervision

    def forward(self, feats: list[Tensor]) -> Tensor | list[Tensor]:
        skips = feats[-2::-1] + [None]
        x, outs = feats[-1], []
        for block, head, skip in zip(self.blocks, self.seg_layers, skips):
            x = block(x, skip)
            if self.deep_supervision:
                outs.append(head(x))
        if not self.deep_supervision:
            return self.seg_layers[-1](x)
        return outs[::-1]  # full resolution first


class ResNetUNet(nn.Module):
    def __init__(self, encoder: ResNetEncoder, decoder_channels: Sequence[int], num_classes: int,
                 deep_supervision: bool):  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.decoder = ResNetUNetDecoder(encoder.output_channels, decoder_channels, num_classes, deep_supervision)
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.decoder(self.features(x))

    def features(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % DIVISOR or x.shape[-1] % DIVISOR:
            raise ConfigError(f"input size {tuple(x.shape[-2:])} is not divisible by {DIVISOR}; crop or pad it")
        return self.encoder(x)

    def input_divisor(self) -> tuple[int, int]:
        return DIVISOR, DIVISOR

    def deep_supervision_scales(self) -> list[list[float]]:
        """One ``[sy, sx]`` per DS output: 1, 1/2, ..., 1/16 (for ``augment.build_transforms``)."""
        return [[1 / 2**i] * 2 for i in range(len(self.decoder.blocks))]


@MODELS.register("resnet_unet")
def build_resnet_unet(
    in_channels: int = 1,
    num_classes: int = 4,
    depth: int = 34,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    deep_supervision: bool = True,
) -> ResNetUNet:
    """U-Net on a ResNet-``depth`` (18, 34 or 50) encoder; ``decoder_channels``: five block widths."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return ResNetUNet(build_resnet_encoder(int(depth), in_channels), decoder_channels, num_classes, deep_supervision)


register_model_type(
    ResNetUNet,
    ModelSpec(
        group_prefixes=(
            ("head", ("decoder.seg_layers.",)),
            ("encoder", ("encoder.",)),
            ("decoder", ("decoder.",)),
        ),
        encoder_features=lambda m, x: m.features(x),
        bottleneck_dim=lambda m: m.encoder.output_channels[-1],
    ),
)
