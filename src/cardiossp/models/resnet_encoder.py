"""A torchvision ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition",
https://arxiv.org/abs/1512.03385) as a multi-scale encoder for 1-channel images.

``ResNetEncoder`` keeps torchvision's module names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
no ``avgpool`` / ``fc``), so a torchvision ResNet state dict (e.g. ImageNet weights saved with
``torch.save(resnet50(weights=...).state_dict(), FILE)``) loads into it once ``fc.*`` is dropped
and ``conv1`` is adapted to one input channel (``adapt_input_conv``).

``forward(x)`` returns the skip features, highest resolution first, bottleneck last::

    [stem (B, 64, H/2, W/2), layer1 (H/4), layer2 (H/8), layer3 (H/16), layer4 (H/32)]

(with DeepLabV3's dilation, layer3 and layer4 stay at H/8.) ``output_channels`` lists their
widths, which ``cardiossp.ssp`` reads for the projection heads.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50

from ..errors import ConfigError

RESNETS = {18: resnet18, 34: resnet34, 50: resnet50}
STEM_CHANNELS = 64


class ResNetEncoder(nn.Module):
    """The stem and the four stages of a torchvision ResNet (or of DeepLabV3's dilated ResNet backbone)."""

    def __init__(self, resnet: nn.Module, in_channels: int = 1):
        super().__init__()
        self.conv1 = _input_conv(resnet.conv1, in_channels)
        self.bn1, self.relu, self.maxpool = resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.output_channels = [STEM_CHANNELS] + [_stage_width(s) for s in self.stages()]

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        x = self.maxpool(x)
        for stage in self.stages():
            x = stage(x)
            feats.append(x)
        return feats


def build_resnet_encoder(depth: int, in_channels: int = 1) -> ResNetEncoder:
    """A randomly initialised ResNet-``depth`` encoder (torchvision's He init; never downloads weights)."""
    if depth not in RESNETS:
        raise ConfigError(f"ResNet depth must be one of {sorted(RESNETS)}, got {depth!r}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    return ResNetEncoder(RESNETS[depth](weights=None), in_channels)


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Fit a conv1 kernel (out, c, kh, kw) trained on ``c`` channels to ``in_channels``.

    The usual trick for grey-scale input (as timm's ``adapt_input_conv``): RGB filters are summed
    into one channel, so a grey image x gives the response the RGB net gave to (x, x, x).
    """
    c = weight.shape[1]
    if c == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ConfigError(f"cannot adapt a conv1 kernel with {c} input channels to {in_channels} channels")


def _input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
    return new


def _stage_width(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
