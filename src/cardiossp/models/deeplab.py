"""DeepLabV3 with a ResNet-50 backbone (Chen et al. 2017, "Rethinking Atrous Convolution for
Semantic Image Segmentation", https://arxiv.org/abs/1706.05587), as torchvision builds it.

Built by ``torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
aux_loss=False)`` - no download, ever - and regrouped so the generic helpers see it like any
other model:

* ``encoder``: the dilated ResNet-50 (output stride 8: layer3/layer4 dilated, not strided) with a
  1-channel ``conv1``; torchvision's module names, so ImageNet ResNet-50 weights load into it;
* ``decoder``: the DeepLab head except its last conv (ASPP, 3x3 conv, BN, ReLU);
* ``head``: that last 1x1 conv (256 -> num_classes).

The logits (1/8 resolution) are upsampled bilinearly to the input size, as torchvision does.
DeepLabV3 has no deep supervision: ``deep_supervision`` is accepted so that every model is built
from the same ``ModelConfig``, and ignored (one full-resolution output; ``deep_supervision_scales``
is None, so training uses a single loss term). The auxiliary FCN classifier is off.
Note: the ASPP pooling branch normalises a 1x1 map, so training needs batches of >= 2 slices.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_resnet50

from ..errors import ConfigError
from .registry import MODELS, ModelSpec, register_model_type
from .resnet_encoder import ResNetEncoder

OUTPUT_STRIDE = 8


class DeepLabV3(nn.Module):
    def __init__(self, encoder: ResNetEncoder, decoder: nn.Sequential, head: nn.Conv2d):
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encoder(x), x.shape[-2:])

    def decode(self, features: list[Tensor], size) -> Tensor:
        logits = self.head(self.decoder(features[-1]))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def input_divisor(self) -> tuple[int, int]:
        return OUTPUT_STRIDE, OUTPUT_STRIDE

    def deep_supervision_scales(self) -> None:
        return None


@MODELS.register("deeplabv3")
def build_deeplabv3(in_channels: int = 1, num_classes: int = 4, deep_supervision: bool = False) -> DeepLabV3:
    """torchvision's DeepLabV3-ResNet50, randomly initialised, ``in_channels`` input channels."""
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    layers = list(tv.classifier.children())
    return DeepLabV3(ResNetEncoder(tv.backbone, in_channels), nn.Sequential(*layers[:-1]), layers[-1])


register_model_type(
    DeepLabV3,
    ModelSpec(
        group_prefixes=(("head", ("head.",)), ("encoder", ("encoder.",)), ("decoder", ("decoder.",))),
        encoder_features=lambda m, x: m.encoder(x),
        bottleneck_dim=lambda m: m.encoder.output_channels[-1],
        decode=lambda m, feats, size: m.decode(feats, size),
    ),
)
