"""The contract every self-supervised pretraining (SSP) method follows, and its registry.

A method is a small ``nn.Module``; the engine owns the loop, AMP, clipping, logging and
checkpoints (after timm's ``task`` modules). One training step is::

    views = method.make_views(sample)              # per sample, CPU, DataLoader worker
    out = method.forward_loss(batch, progress)     # {"loss": scalar tensor, "<log>": float}
    out["loss"].backward()
    method.on_after_backward(epoch)                # DINO: cancel last-layer grads in epoch 0
    optimizer.step()
    method.on_train_batch_end(progress)            # DINO: EMA teacher update

``progress`` in [0, 1] is the fraction of training done; every schedule is a pure
function of it (``cardiossp.ssp.schedules``). ``method(batch, progress)`` is
``forward_loss`` so the method can be wrapped by DDP.

What the engine needs to know about a method is declared on its class, never by its name:
``find_unused_parameters`` (DDP must look for parameters without gradient: MIM), ``multitask``
(its pretext head can keep training during fine-tuning: position), ``schedule_options(epochs)``
(options derived from the run length: DINO) and ``extra_record()`` (more to save in
``pretrained.pt`` than the transferable weights: position's head).

Losses compare embeddings in float32 even under autocast (:func:`fp32` and :func:`no_autocast`):
a bf16 dot product of 512-d unit vectors is off by ~1e-2, as large as the differences a
temperature of 0.1 or 0.04 turns into probabilities.

``transferable_state()`` returns what fine-tuning receives, keyed in the namespace of the
*segmentation model* built by ``backbone_factory`` (e.g. ``encoder.stages.0...``), so
``seg_model.load_state_dict(state, strict=False)`` works directly. Keys that alias the
same tensors (PlainConvUNet stores its encoder again as ``decoder.encoder.*``) are
included, so nnU-Net's ``load_pretrained_weights`` finds every key it expects.

Backbones: any segmentation network ``backbone_factory(num_classes, deep_supervision)``
whose ``.encoder(x)`` returns the list of skip features (last = bottleneck) and declares their
``output_channels``, e.g. nnU-Net's ``PlainConvUNet`` (Isensee et al. 2021) or the ResNet encoders.
Methods keep the encoder alone (``build_encoder``) and pool its bottleneck with the model
registry's helpers (``cardiossp.models.pooled_bottleneck``, ``bottleneck_dim``), which take a
bare encoder as well as a whole model.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry
from .views import Augment, as_size, default_augment

BackboneFactory = Callable[[int, bool], nn.Module]

SSP_METHODS: Registry[type["SSPMethod"]] = Registry("SSP method")


def resolve_cfg(name: str, defaults: dict, cfg: dict | None) -> dict:
    """Defaults overlaid with ``cfg``; an unknown key is a :class:`ConfigError`."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"SSP method {name!r}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **cfg}


def build_backbone(factory: BackboneFactory, num_classes: int, deep_supervision: bool) -> nn.Module:
    net = factory(num_classes, deep_supervision)
    if not isinstance(getattr(net, "encoder", None), nn.Module):
        raise ConfigError(f"backbone {type(net).__name__} has no '.encoder' module; SSP methods need one")
    return net


def build_encoder(factory: BackboneFactory) -> tuple[nn.Module, dict[str, str]]:
    """The encoder of a fresh backbone (1 class, no deep supervision) and its ``encoder_key_map``.
    The rest of the network is dropped: it is not trained, and parameters that never get a
    gradient would be dead weight in the optimiser and trouble DDP."""
    net = build_backbone(factory, 1, False)
    return net.encoder, encoder_key_map(net)


def encoder_key_map(net: nn.Module) -> dict[str, str]:
    """Map every key of ``net.state_dict()`` whose tensor is one of ``net.encoder``'s to
    that tensor's key in ``net.encoder.state_dict()`` (finds aliases such as
    ``decoder.encoder.*`` by storage, not by name)."""
    by_storage = {}
    for k, t in net.encoder.state_dict().items():
        by_storage[(t.data_ptr(), tuple(t.shape), t.dtype)] = k
    out = {}
    for k, t in net.state_dict().items():
        enc_key = by_storage.get((t.data_ptr(), tuple(t.shape), t.dtype))
        if enc_key is not None and t.numel() > 0:
            out[k] = enc_key
    if not out:
        raise ConfigError(f"could not find the encoder's tensors in {type(net).__name__}.state_dict()")
    return out


def encoder_state(encoder: nn.Module, key_map: dict[str, str]) -> dict[str, Tensor]:
    """Snapshot of ``encoder`` in the segmentation model's key namespace."""
    sd = encoder.state_dict()
    return {seg_key: sd[enc_key].detach().clone() for seg_key, enc_key in key_map.items()}


def fp32(*tensors: Tensor) -> list[Tensor]:
    """The tensors in float32 when autocast (or a half-precision model) made them 16-bit; float32 and
    float64 tensors are returned as they are."""
    return [t.float() if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16) else t
            for t in tensors]


def no_autocast(like: Tensor):
    """Context in which autocast is off for ``like``'s device type: similarities, softmaxes and
    log-sum-exps of a loss run in the precision of their (float32) inputs."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def require(batch: dict, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; has {sorted(batch)} (were the views made by this method?)")
    return [batch[k] for k in keys]


class SSPMethod(nn.Module):
    """Base class: subclasses set ``name``, ``transfers``, ``defaults`` and implement
    ``view_maker``, ``forward_loss`` and ``transferable_state``.

    Args:
        backbone_factory: ``(num_classes, deep_supervision) -> segmentation nn.Module``
            with an ``.encoder``.
        cfg: method options (see the subclass's ``defaults``); common ones are
            ``input_size`` (int or (H, W); images arriving at ``make_views`` are
            augmented to this size) and ``augment`` (preset name for the default
            augmentation: ``paper``, ``nnunet`` or ``none``).
        augment: per-sample callable ``{"image": (1,H,W)} -> {"image": (1,h,w)}``;
            default ``cardiossp.data.augment.build_transforms(cfg["augment"], input_size)``.
    """

    name: ClassVar[str] = ""
    transfers: ClassVar[str] = "encoder"  # "encoder" | "encoder+decoder"
    all_views: ClassVar[bool] = False  # pretrain on long-axis subjects too (split ``other_views``)
    find_unused_parameters: ClassVar[bool] = False  # DDP: some parameters get no gradient in a step
    multitask: ClassVar[bool] = False  # fine-tuning strategy ``multitask`` can keep training its pretext head
    defaults: ClassVar[dict] = {"input_size": 256, "augment": "paper", "augment_on_device": False}

    @classmethod
    def schedule_options(cls, epochs: int) -> dict:
        """Options that depend on the length of the pretraining run (``epochs``); the engine fills
        them in where the user set none. Default: none."""
        return {}

    def __init__(self, backbone_factory: BackboneFactory, cfg: dict | None = None, augment: Augment | None = None):
        super().__init__()
        self.cfg = resolve_cfg(self.name, self.defaults, cfg)
        self.input_size = as_size(self.cfg["input_size"])
        self.augment = augment if augment is not None else default_augment(self.cfg["augment"], self.input_size,
                                                                           self.cfg["augment_on_device"])

    # --- data side (CPU, workers) -------------------------------------------------
    @property
    def view_maker(self) -> Callable[[dict], dict]:
        """A picklable callable holding only the augmentation (no network)."""
        raise NotImplementedError

    def make_views(self, sample: dict) -> dict:
        """``sample`` = {"image": (1,H,W), "position": float, "subject": str} -> views."""
        return self.view_maker(sample)

    # --- model side (engine) ------------------------------------------------------
    def forward_loss(self, batch: dict, progress: float) -> dict:
        """Collated views -> ``{"loss": scalar tensor, **floats to log}``."""
        raise NotImplementedError

    def forward(self, batch: dict, progress: float = 0.0) -> dict:
        return self.forward_loss(batch, progress)

    def on_after_backward(self, epoch: int) -> None:
        """Called after ``loss.backward()``, before the optimizer step."""

    def on_train_batch_end(self, progress: float) -> None:
        """Called after the optimizer step."""

    def transferable_state(self) -> dict[str, Tensor]:
        """What fine-tuning receives, keyed like the segmentation model's state dict."""
        raise NotImplementedError

    def extra_record(self) -> dict:
        """More entries for ``pretrained.pt`` (tensors, numbers, strings only: it is loaded with
        ``weights_only=True``). Default: none."""
        return {}


def build_method(
    name: str,
    backbone_factory: BackboneFactory,
    cfg: dict | None = None,
    augment: Augment | None = None,
    **kwargs: Any,
) -> SSPMethod:
    """Instantiate the registered method ``name`` (``simclr``, ``pcl``, ``dino``, ``mim``)."""
    return SSP_METHODS.get(name)(backbone_factory, cfg, augment=augment, **kwargs)
