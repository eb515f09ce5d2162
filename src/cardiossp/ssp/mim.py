"""Masked image modelling, MIM, with a full U-Net (de Mooij et al. 2024, after SimMIM /
MAE: Xie et al. 2022, https://arxiv.org/abs/2111.09886; He et al. 2022,
https://arxiv.org/abs/2111.06377; Chen et al. 2023, WACV).

The augmented, z-scored slice is cut into square patches (32 px at 256 px, i.e. size/8);
75 % of them (exactly ``round(0.75 * n_patches)`` per slice) are set to 0.0 *after*
normalisation and augmentation. The segmentation U-Net, built with one output channel
and no deep supervision, reconstructs the slice; the loss is the mean squared error over
the masked pixels only (sum over masked pixels / number of masked pixels in the batch,
as in the authors' ``train_mim.py``). Encoder *and* decoder transfer, everything except
the output convolution(s): ``exclude_prefixes``, by default the ``head`` group of the
backbone's ``cardiossp.models`` ModelSpec, else ``decoder.seg_layers.`` (nnU-Net's
PlainConvUNet).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import SSP_METHODS, BackboneFactory, SSPMethod, build_backbone, require
from .views import Augment, MaskedImageViews

DEFAULT_HEAD_PREFIXES = ("decoder.seg_layers.",)


def head_prefixes(net) -> tuple[str, ...]:
    """State-dict prefixes of the output layer(s): the ``head`` group of the model's
    ModelSpec when ``cardiossp.models`` knows the architecture, else PlainConvUNet's."""
    try:
        from ..models import model_spec

        spec = model_spec(net)
    except (ImportError, ConfigError):
        return DEFAULT_HEAD_PREFIXES
    for group, prefixes in spec.group_prefixes:
        if group == "head":
            return tuple(prefixes)
    return DEFAULT_HEAD_PREFIXES


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(pred - target)**2`` over pixels where ``mask`` is True.

    pred, target: (B, 1, H, W); mask: bool, broadcastable. Visible pixels contribute
    neither value nor gradient (masked_fill, not multiplication, so NaN there is ignored).
    """
    mask = mask.bool().expand_as(pred)
    n = mask.sum()
    if n == 0:
        raise ValueError("masked_mse: the mask selects no pixel")
    diff = (pred - target).masked_fill(~mask, 0.0)
    return diff.pow(2).sum() / n


@SSP_METHODS.register("mim")
class MIM(SSPMethod):
    """Views: ``image`` (B,1,H,W) augmented target, ``mask`` (B,1,H,W) bool.

    Options: ``patch_size`` (None = input_size // 8), ``mask_ratio`` (0.75),
    ``mask_value`` (0.0), ``exclude_prefixes`` (None = :func:`head_prefixes`).
    """

    name = "mim"
    transfers = "encoder+decoder"
    find_unused_parameters = True  # DDP: without deep supervision the decoder's coarser output convs idle
    defaults = {
        **SSPMethod.defaults,
        "patch_size": None,
        "mask_ratio": 0.75,
        "mask_value": 0.0,
        "exclude_prefixes": None,
    }

    def __init__(self, backbone_factory: BackboneFactory, cfg: dict | None = None, augment: Augment | None = None):
        super().__init__(backbone_factory, cfg, augment)
        c = self.cfg
        if not (0.0 < c["mask_ratio"] < 1.0):
            raise ConfigError(f"mim: mask_ratio must be in (0, 1), got {c['mask_ratio']}")
        self.net = build_backbone(backbone_factory, 1, False)
        if c["exclude_prefixes"] is None:
            c["exclude_prefixes"] = head_prefixes(self.net)
        elif isinstance(c["exclude_prefixes"], str):
            c["exclude_prefixes"] = (c["exclude_prefixes"],)
        c["exclude_prefixes"] = tuple(c["exclude_prefixes"])
        keys = self.net.state_dict().keys()
        if not any(k.startswith(p) for k in keys for p in c["exclude_prefixes"]):
            raise ConfigError(
                f"mim: no key of {type(self.net).__name__} starts with any of {list(c['exclude_prefixes'])}; "
                "set exclude_prefixes to the prefix of the output layer(s)"
            )

    @property
    def view_maker(self) -> MaskedImageViews:
        return MaskedImageViews(self.augment, self.cfg["patch_size"], float(self.cfg["mask_ratio"]))

    def forward_loss(self, batch: dict, progress: float) -> dict:
        image, mask = require(batch, "image", "mask")
        mask = mask.bool()
        pred = self.net(image.masked_fill(mask, float(self.cfg["mask_value"])))
        if isinstance(pred, (list, tuple)):
            pred = pred[0]
        if pred.shape != image.shape:
            raise ValueError(f"mim: network output {tuple(pred.shape)} != image {tuple(image.shape)}; "
                             "the backbone must be built with 1 output channel")  # fmt: skip
        loss = masked_mse(pred, image, mask)
        with torch.no_grad():
            visible = ~mask
            visible_mse = masked_mse(pred, image, visible).item() if visible.any() else 0.0
        return {"loss": loss, "visible_mse": visible_mse, "mask_fraction": mask.float().mean().item()}

    def transferable_state(self) -> dict[str, Tensor]:
        excl = self.cfg["exclude_prefixes"]
        return {k: v.detach().clone() for k, v in self.net.state_dict().items() if not k.startswith(excl)}
