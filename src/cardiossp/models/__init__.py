"""Segmentation networks: registry (``MODELS``, ``build_model``) and named parameter groups.

Registered models: ``unet`` (nnU-Net's 2D PlainConvUNet). Each model's parameters split into
``encoder`` / ``decoder`` / ``head`` groups (see ``registry.ModelSpec``).
"""

from . import unet  # noqa: F401  (registers "unet")
from .registry import (
    GROUPS,
    MODELS,
    ModelSpec,
    bottleneck_dim,
    build_model,
    classify_keys,
    encoder_features,
    group_parameters,
    key_groups,
    model_info,
    model_spec,
    parameter_groups,
    pooled_bottleneck,
    register_model_type,
    unwrap,
)
from .unet import build_unet, deep_supervision_scales, input_divisor, set_deep_supervision, unet_features

__all__ = [
    "GROUPS",
    "MODELS",
    "ModelSpec",
    "bottleneck_dim",
    "build_model",
    "build_unet",
    "classify_keys",
    "deep_supervision_scales",
    "encoder_features",
    "group_parameters",
    "input_divisor",
    "key_groups",
    "model_info",
    "model_spec",
    "parameter_groups",
    "pooled_bottleneck",
    "register_model_type",
    "set_deep_supervision",
    "unet_features",
    "unwrap",
]
