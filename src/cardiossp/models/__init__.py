"""Segmentation networks: registry (``MODELS``, ``build_model``) and named parameter groups.

Registered models: ``unet`` (nnU-Net's 2D PlainConvUNet), ``resnet_unet`` (a U-Net on a torchvision
ResNet-18/34/50 encoder) and ``deeplabv3`` (torchvision's DeepLabV3-ResNet50). Each model's
parameters split into ``encoder`` / ``decoder`` / ``head`` groups (see ``registry.ModelSpec``);
``build_from_config`` builds any of them from a ``ModelConfig`` (see ``build``).
"""

from . import deeplab, resnet_unet, unet  # noqa: F401  (register "deeplabv3", "resnet_unet", "unet")
from .build import (
    build_from_config,
    deep_supervision_scales,
    input_divisor,
    load_encoder_weights_file,
    model_kwargs,
    set_deep_supervision,
)
from .deeplab import build_deeplabv3
from .registry import (
    GROUPS,
    MODELS,
    ModelSpec,
    bottleneck_dim,
    build_model,
    classify_keys,
    decode_features,
    encoder_features,
    group_parameters,
    is_bare_encoder,
    key_groups,
    model_info,
    model_spec,
    parameter_groups,
    pool_features,
    pooled_bottleneck,
    register_model_type,
    unwrap,
)
from .resnet_unet import build_resnet_unet
from .unet import build_unet, unet_features
from .weights import FitReport, fit_state_dict

__all__ = [
    "FitReport",
    "GROUPS",
    "MODELS",
    "ModelSpec",
    "bottleneck_dim",
    "build_deeplabv3",
    "build_from_config",
    "build_model",
    "build_resnet_unet",
    "build_unet",
    "classify_keys",
    "decode_features",
    "deep_supervision_scales",
    "encoder_features",
    "fit_state_dict",
    "group_parameters",
    "input_divisor",
    "is_bare_encoder",
    "key_groups",
    "load_encoder_weights_file",
    "model_info",
    "model_kwargs",
    "model_spec",
    "parameter_groups",
    "pool_features",
    "pooled_bottleneck",
    "register_model_type",
    "set_deep_supervision",
    "unet_features",
    "unwrap",
]
