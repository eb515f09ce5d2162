"""Segmentation losses: soft Dice + cross-entropy, and the deep-supervision wrapper.

``DiceCELoss`` is nnU-Net v2's ``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss``
(Isensee et al. 2021): softmax probabilities, soft Dice over the foreground classes only
(``do_bg=False``), smooth 1e-5, "batch Dice" (intersections and sums pooled over the whole batch
before the ratio) by default, plus mean cross-entropy, weights 1:1. de Mooij et al. 2024 use the same
Dice + CE (their repo weighs both 0.5 and uses per-sample Dice: ``batch_dice=False,
weight_ce=weight_dice=0.5``). The Dice term is reported as ``1 - mean Dice`` (nnU-Net returns
``-mean Dice``; the gradients are identical), so a perfect prediction scores 0.

``DeepSupervisionLoss`` weighs the output at scale i (0 = full resolution) by 1/2^i, normalised to
sum 1, as de Mooij et al. 2024 and their repo (qcardia-models ``MultiScaleLoss``) do: over the 6 outputs of
the 7-stage U-Net the weights are 32/63, 16/63, ..., 1/63. nnU-Net v2 instead sets the weight of the
lowest-resolution output to 0 before normalising; pass ``zero_lowest=True`` for that.

Shapes: logits (B, C, H, W) float; targets (B, 1, H, W) or (B, H, W) integer labels in [0, C).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError


def _as_label_map(logits: Tensor, target: Tensor) -> Tensor:
    """Check shapes/values and return the target as (B, 1, *spatial) int64."""
    if logits.ndim < 3:
        raise ConfigError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[0] != logits.shape[0] \
            or target.shape[2:] != logits.shape[2:]:
        raise DataError(
            None,
            f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}; "
            "expected (B, 1, *spatial) or (B, *spatial) labels",
        )
    if target.is_floating_point() or target.is_complex():
        raise DataError(None, f"target must hold integer labels, got dtype {target.dtype}")
    lo, hi = torch.aminmax(target)
    if lo.item() < 0 or hi.item() >= logits.shape[1]:
        raise DataError(
            None, f"target labels span [{lo.item()}, {hi.item()}] but logits have {logits.shape[1]} classes"
        )
    return target.long()


class DiceCELoss(nn.Module):
    """Soft Dice (foreground classes) + cross-entropy on logits; see the module docstring."""

    def __init__(
        self,
        batch_dice: bool = True,
        do_bg: bool = False,
        smooth: float = 1e-5,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
    ):
        super().__init__()
        if smooth < 0 or weight_ce < 0 or weight_dice < 0:
            raise ConfigError(f"smooth and loss weights must be >= 0, got {smooth}, {weight_ce}, {weight_dice}")
        if weight_ce == 0 and weight_dice == 0:
            raise ConfigError("at least one of weight_ce and weight_dice must be > 0")
        self.batch_dice = batch_dice
        self.do_bg = do_bg
        self.smooth = float(smooth)
        self.weight_ce = float(weight_ce)
        self.weight_dice = float(weight_dice)

    def dice_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """``1 - mean soft Dice`` over classes (and samples unless batch Dice); target (B, 1, ...) int64."""
        probs = torch.softmax(logits, dim=1)
        axes = tuple(range(2, logits.ndim))
        with torch.no_grad():
            onehot = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, target, True)
            if not self.do_bg:
                onehot = onehot[:, 1:]
            sum_gt = onehot.sum(axes, dtype=probs.dtype)
        if not self.do_bg:
            probs = probs[:, 1:]
        if probs.shape[1] == 0:
            raise ConfigError("do_bg=False needs at least 2 classes")
        intersect = (probs * onehot).sum(axes)
        sum_pred = probs.sum(axes)
        if self.batch_dice:
            intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
        dice = (2 * intersect + self.smooth) / torch.clip(sum_gt + sum_pred + self.smooth, min=1e-8)
        return 1 - dice.mean()

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss": weighted sum, "dice": Dice term, "ce": cross-entropy}`` (scalars)."""
        if logits.dtype in (torch.float16, torch.bfloat16) or not logits.is_floating_point():
            logits = logits.float()
        target = _as_label_map(logits, target)
        zero = logits.new_zeros(())
        dice = self.dice_loss(logits, target) if self.weight_dice else zero
        ce = F.cross_entropy(logits, target[:, 0]) if self.weight_ce else zero
        return {"loss": self.weight_ce * ce + self.weight_dice * dice, "dice": dice, "ce": ce}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.terms(logits, target)["loss"]


def deep_supervision_weights(n_outputs: int, zero_lowest: bool = False) -> list[float]:
    """``1/2^i`` for i = 0..n-1 normalised to sum 1 (nnU-Net: lowest set to 0 first if ``zero_lowest``)."""
    if n_outputs < 1:
        raise ConfigError(f"n_outputs must be >= 1, got {n_outputs}")
    w = [1.0 / 2**i for i in range(n_outputs)]
    if zero_lowest and n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the deep-supervision outputs (full resolution first).

    ``outputs``: a list of n_outputs logits [(B, C, H, W), (B, C, H/2, W/2), ...] or one tensor (then
    only ``loss(outputs, full-res target)`` is computed, e.g. with DS switched off for validation).
    ``targets``: a matching list (as ``augment.build_transforms`` produces with DS scales) or one
    full-resolution (B, 1, H, W) tensor, which is then downsampled to every output size by
    nearest-neighbour ('nearest-exact', the rule batchgeneratorsv2's DownsampleSegForDSTransform uses).
    """

    def __init__(self, loss: nn.Module, n_outputs: int, weights: Sequence[float] | None = None,
                 zero_lowest: bool = False):
        super().__init__()
        self.loss = loss
        self.n_outputs = int(n_outputs)
        if weights is None:
            weights = deep_supervision_weights(self.n_outputs, zero_lowest)
        elif len(weights) != self.n_outputs:
            raise ConfigError(f"got {len(weights)} weights for {self.n_outputs} outputs")
        self.weights = [float(w) for w in weights]

    def _pairs(self, outputs, targets) -> list[tuple[float, Tensor, Tensor]]:
        if isinstance(outputs, Tensor):
            target = targets if isinstance(targets, Tensor) else targets[0]
            return [(1.0, outputs, target)]
        outputs = list(outputs)
        if len(outputs) != self.n_outputs:
            raise ConfigError(f"expected {self.n_outputs} deep-supervision outputs, got {len(outputs)}")
        if isinstance(targets, Tensor):
            full = targets if targets.ndim == outputs[0].ndim else targets.unsqueeze(1)
            targets = [
                full if o.shape[2:] == full.shape[2:]
                else F.interpolate(full.float(), size=o.shape[2:], mode="nearest-exact").to(full.dtype)
                for o in outputs
            ]
        elif len(targets) != len(outputs):
            raise DataError(None, f"{len(targets)} deep-supervision targets for {len(outputs)} outputs")
        return [(w, o, t) for w, o, t in zip(self.weights, outputs, targets) if w != 0]

    def terms(self, outputs, targets) -> dict[str, Tensor]:
        """Weighted sums of every term the inner loss reports (just ``loss`` if it has no ``terms``)."""
        total: dict[str, Tensor] = {}
        for w, o, t in self._pairs(outputs, targets):
            parts = self.loss.terms(o, t) if hasattr(self.loss, "terms") else {"loss": self.loss(o, t)}
            for k, v in parts.items():
                total[k] = total[k] + w * v if k in total else w * v
        return total

    def forward(self, outputs, targets) -> Tensor:
        return sum(w * self.loss(o, t) for w, o, t in self._pairs(outputs, targets))
