"""Model registry and the model-independent helpers every segmentation network gets.

Every architecture registers

* a **factory** under a name in ``MODELS`` (``build_model("unet", ...)``), and
* a **ModelSpec** for its class (``register_model_type``) that says how its parameters split into the
  named groups ``encoder`` / ``decoder`` / ``head`` (ordered state-dict key prefixes, first match wins),
  how to get the encoder's multi-scale features and how wide the bottleneck is.

Pretraining methods use the groups to decide what is transferred (SimCLR/PCL/DINO: ``encoder``;
MIM: ``encoder`` + ``decoder``, de Mooij et al. 2024 §2.3), fine-tuning uses them for freezing
(Bai et al. 2019 "SSL+Decoder") and the training engine for per-group learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

GROUPS = ("encoder", "decoder", "head")

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


@dataclass(frozen=True)
class ModelSpec:
    """How the generic helpers see one architecture class.

    group_prefixes: ordered ``(group, (prefix, ...))`` pairs; a key belongs to the first group one of
        whose prefixes it starts with (so put ``head`` before a broader ``decoder`` prefix).
    encoder_features: ``(model, x (B, C, H, W)) -> [skip_0 (B, F0, H, W), ..., bottleneck]``.
    bottleneck_dim: ``model -> channels of the deepest encoder feature map``.
    decode: ``(model, features, input (H, W)) -> the model's output`` from ``encoder_features``'
        list, so that ``decode(m, encoder_features(m, x), x.shape[-2:]) == m(x)`` (feature
        perturbation, UniMatch).
    """

    group_prefixes: tuple[tuple[str, tuple[str, ...]], ...]
    encoder_features: Callable[[nn.Module, Tensor], list[Tensor]]
    bottleneck_dim: Callable[[nn.Module], int]
    decode: Callable[[nn.Module, list[Tensor], tuple[int, int]], object] = lambda m, feats, size: m.decoder(feats)

    def __post_init__(self) -> None:
        for group, prefixes in self.group_prefixes:
            if group not in GROUPS:
                raise ConfigError(f"unknown parameter group {group!r}; groups are {', '.join(GROUPS)}")
            if not prefixes or any(not p for p in prefixes):
                raise ConfigError(f"group {group!r} needs non-empty key prefixes, got {prefixes!r}")


_SPECS: dict[type, ModelSpec] = {}


def register_model_type(cls: type, spec: ModelSpec) -> None:
    """Declare the ModelSpec of an architecture class (subclasses inherit it)."""
    if cls in _SPECS:
        raise ValueError(f"model type {cls.__name__} registered twice")
    _SPECS[cls] = spec


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP / DataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _find_spec(model: nn.Module) -> ModelSpec | None:
    for klass in type(model).__mro__:
        if klass in _SPECS:
            return _SPECS[klass]
    return None


def model_spec(model: nn.Module) -> ModelSpec:
    """The ModelSpec registered for ``type(model)`` or its nearest registered base class."""
    model = unwrap(model)
    spec = _find_spec(model)
    if spec is None:
        known = ", ".join(sorted(c.__name__ for c in _SPECS)) or "none"
        raise ConfigError(f"no ModelSpec registered for {type(model).__name__}; known types: {known}")
    return spec


def is_bare_encoder(module: nn.Module) -> bool:
    """A model's ``.encoder`` on its own (what SSP methods train): no ModelSpec, no ``.encoder`` of
    its own, and it declares ``output_channels`` (dynamic_network_architectures' encoders and
    ``ResNetEncoder`` do); its forward returns the feature maps, bottleneck last."""
    module = unwrap(module)
    channels = getattr(module, "output_channels", None)
    return (_find_spec(module) is None and not hasattr(module, "encoder")
            and isinstance(channels, (list, tuple)) and len(channels) > 0)  # fmt: skip


def build_model(name: str, **cfg) -> nn.Module:
    """Build the registered model ``name`` with keyword configuration ``cfg``."""
    return MODELS.get(name)(**cfg)


def classify_keys(
    keys: Iterable[str], group_prefixes: tuple[tuple[str, tuple[str, ...]], ...]
) -> dict[str, list[str]]:
    """Split state-dict keys into groups by prefix (first matching group wins, order kept).

    Every group in ``GROUPS`` is present in the result (possibly empty). A key that matches no
    prefix is an error: silently dropping it would silently skip its transfer or freezing.
    """
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    unmatched = []
    for key in keys:
        for group, prefixes in group_prefixes:
            if key.startswith(prefixes):
                out[group].append(key)
                break
        else:
            unmatched.append(key)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise ConfigError(f"{len(unmatched)} keys match no parameter group: {shown}")
    return out


def key_groups(model: nn.Module, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Group state-dict keys (default: all of ``model.state_dict()``, buffers included)."""
    model = unwrap(model)
    if keys is None:
        keys = model.state_dict().keys()
    return classify_keys(keys, model_spec(model).group_prefixes)


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{"encoder": [...], "decoder": [...], "head": [...]}``: every parameter name exactly once.

    Names are those of ``model.named_parameters()`` (shared tensors listed once, under their first name).
    """
    model = unwrap(model)
    return key_groups(model, [name for name, _ in model.named_parameters()])


def group_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Like ``parameter_groups`` but returns the Parameter objects (for optimiser param groups)."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    return {g: [params[n] for n in names] for g, names in parameter_groups(model).items()}


def model_info(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and one entry per group."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    info = {g: sum(params[n].numel() for n in names) for g, names in parameter_groups(model).items()}
    info["total"] = sum(p.numel() for p in params.values())
    info["trainable"] = sum(p.numel() for p in params.values() if p.requires_grad)
    return info


def encoder_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Encoder feature maps of ``x`` (B, C, H, W), highest resolution first, bottleneck last.

    ``model``: a registered segmentation model, or a bare encoder (``is_bare_encoder``)."""
    model = unwrap(model)
    if x.ndim != 4:
        raise ConfigError(f"encoder_features expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if is_bare_encoder(model):
        feats = model(x)
        return list(feats) if isinstance(feats, (list, tuple)) else [feats]
    return model_spec(model).encoder_features(model, x)


def decode_features(model: nn.Module, features: list[Tensor], size: tuple[int, int]):
    """The model's output (logits, or one per deep-supervision scale) from its encoder features of an
    input of spatial size ``size``; ``decode_features(m, encoder_features(m, x), x.shape[-2:]) == m(x)``."""
    model = unwrap(model)
    return model_spec(model).decode(model, list(features), tuple(size))


def bottleneck_dim(model: nn.Module) -> int:
    """Channels of the deepest encoder feature map (input width of SSL projection heads) of a
    registered model or a bare encoder."""
    model = unwrap(model)
    if is_bare_encoder(model):
        return int(model.output_channels[-1])
    return int(model_spec(model).bottleneck_dim(model))


def pool_features(features) -> Tensor:
    """Global-average-pooled bottleneck (B, C) of encoder features: a list of maps (bottleneck last,
    as ``encoder_features`` returns), a dict of them (in order), or one (B, C, h, w) map; an already
    pooled (B, C) tensor is returned as it is."""
    if isinstance(features, dict):
        features = list(features.values())
    feats = features[-1] if isinstance(features, (list, tuple)) else features
    return torch.flatten(feats.mean(dim=(-2, -1)), 1) if feats.ndim == 4 else feats


def pooled_bottleneck(model: nn.Module, x: Tensor) -> Tensor:
    """Global-average-pooled bottleneck features (B, bottleneck_dim) of ``x`` (B, C, H, W)."""
    return pool_features(encoder_features(model, x))
