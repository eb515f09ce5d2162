"""Model-agnostic glue: build any registered model from a ``ModelConfig``, initialise its encoder
from a local weights file, and the output helpers training and inference need.

Building (``build_from_config``): a factory receives ``in_channels``, ``num_classes``,
``deep_supervision``, each top-level ``ModelConfig`` field its signature names (``n_stages``,
``base_features``, ``max_features``, ``width``, ``norm``: the ``unet``'s geometry; models whose
factory does not take them ignore them, so the presets stay valid for every model) and every key of
``ModelConfig.options`` (model-specific, e.g. ``{depth: 50}`` for ``resnet_unet``; an option the
factory does not take is an error). Then ``encoder_weights`` (a file) initialises the encoder.

Output helpers (``deep_supervision_scales``, ``input_divisor``, ``set_deep_supervision``): a model
class may define the first two as methods (``resnet_unet``, ``deeplabv3``); nnU-Net's
``PlainConvUNet`` uses the ``unet`` module's versions.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from . import unet
from .registry import MODELS, unwrap
from .resnet_encoder import adapt_input_conv
from .weights import fit_state_dict, load_torch_file

log = logging.getLogger("cardiossp")
NOT_FACTORY_FIELDS = ("name", "deep_supervision", "encoder_weights", "options")


def model_kwargs(model_cfg: Any, num_classes: int, deep_supervision: bool | None = None) -> dict[str, Any]:
    """The keyword arguments ``MODELS[model_cfg.name]`` is called with (see module docstring)."""
    factory = MODELS.get(model_cfg.name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    ds = model_cfg.deep_supervision if deep_supervision is None else deep_supervision
    kwargs = {"in_channels": 1, "num_classes": num_classes, "deep_supervision": bool(ds)}
    for f in dataclasses.fields(model_cfg):
        if f.name not in NOT_FACTORY_FIELDS and (takes_any or f.name in params):
            kwargs[f.name] = getattr(model_cfg, f.name)
    options = dict(model_cfg.options or {})
    clash = sorted(set(options) & (set(kwargs) | set(NOT_FACTORY_FIELDS)))
    unknown = sorted(k for k in options if k not in params and not takes_any)
    if clash:
        raise ConfigError(f"model.options {clash} are set elsewhere (model.<key> or by the run); remove them there")
    if unknown:
        takes = sorted(set(params) - set(kwargs))
        raise ConfigError(f"model {model_cfg.name!r} takes no option(s) {unknown}; its options: {takes}")
    return {**kwargs, **options}


def build_from_config(model_cfg: Any, num_classes: int, deep_supervision: bool | None = None,
                      load_encoder_weights: bool = True) -> nn.Module:  # fmt: skip
    """Build ``model_cfg.name``; with ``load_encoder_weights`` also load ``model_cfg.encoder_weights``
    (training starts; a checkpoint being restored replaces every weight anyway, so pass False then)."""
    model = MODELS.get(model_cfg.name)(**model_kwargs(model_cfg, num_classes, deep_supervision))
    if load_encoder_weights and getattr(model_cfg, "encoder_weights", None):
        load_encoder_weights_file(model, model_cfg.encoder_weights)
    return model


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``path`` (``weights.load_torch_file``: ``weights_only=True``, its ``.sha256``
    checked when there is one; ``{"state_dict": ...}`` unwrapped, DDP's ``module.`` prefix dropped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found")
    obj = load_torch_file(path, "encoder weights")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), e.g. torch.save(resnet.state_dict())")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_encoder_weights_file(model: nn.Module, path: str | Path) -> int:
    """Load a state dict of the encoder alone (e.g. a torchvision ResNet's; ``fc.*`` ignored) into
    ``model.encoder``; a 3-channel ``conv1`` is summed into the 1-channel one (``adapt_input_conv``).

    Every encoder tensor must be in the file with its shape (``num_batches_tracked`` may be absent,
    as in old torchvision files), and nothing else: otherwise a ``CheckpointError`` naming the file.
    Returns the number of tensors loaded.
    """
    encoder = getattr(unwrap(model), "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"{type(unwrap(model)).__name__} has no '.encoder' to load {path} into")
    state = {k: v for k, v in read_weights(path).items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    adapted = ""
    if "conv1.weight" in state and "conv1.weight" in own and state["conv1.weight"].ndim == 4:
        in_channels = own["conv1.weight"].shape[1]
        if state["conv1.weight"].shape[1] == 3 and in_channels != 3:
            state["conv1.weight"] = adapt_input_conv(state["conv1.weight"], in_channels)
            adapted = f" (conv1: RGB filters summed into {in_channels} channel)"
    fit_state_dict(own, state, str(path), optional=("num_batches_tracked",)).require_exact(
        f"does not fit the encoder of {type(unwrap(model)).__name__}", limit=4, theirs="file",
        hint=" (for a ResNet encoder: a torchvision ResNet state dict of the same depth; deeplabv3 needs ResNet-50)")
    encoder.load_state_dict(state, strict=False)
    log.info("initialised %d encoder tensors from %s%s", len(state), path, adapted)
    return len(state)


def deep_supervision_scales(model: nn.Module) -> list[list[float]] | None:
    """Target scales ``[[1, 1], [0.5, 0.5], ...]`` of the outputs in deep-supervision mode, one per
    output (for ``augment.build_transforms``); None for a model without deep supervision."""
    m = unwrap(model)
    if hasattr(m, "deep_supervision_scales"):
        return m.deep_supervision_scales()
    if isinstance(m, PlainConvUNet):
        return unet.deep_supervision_scales(m)
    raise ConfigError(f"{type(m).__name__}: unknown deep-supervision layout")


def input_divisor(model: nn.Module) -> tuple[int, int]:
    """(dy, dx): H and W of the input must be multiples of these."""
    m = unwrap(model)
    if hasattr(m, "input_divisor"):
        return tuple(m.input_divisor())
    if isinstance(m, PlainConvUNet):
        return unet.input_divisor(m)
    raise ConfigError(f"{type(m).__name__}: unknown input divisor")


def set_deep_supervision(model: nn.Module, enabled: bool) -> None:
    """Switch the deep-supervision outputs on/off (off for inference); a no-op turning it off on a
    model without them, an error turning it on."""
    decoder = getattr(unwrap(model), "decoder", None)
    if hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = bool(enabled)
    elif enabled:
        raise ConfigError(f"{type(unwrap(model)).__name__} has no deep-supervision outputs")
