"""Losses of the semi-supervised methods, written out because their masked forms exist in
neither MONAI nor nnU-Net.

``masked_dice_loss`` is the Dice loss of SSL4MIS / UniMatch / BCP (``DiceLoss`` with a mask or
``ignore``): per class, including background, intersections and squared sums pooled over
the batch and the pixels the mask keeps, ``1 - (2 I + s) / (sum p^2 + sum t^2 + s)``,
averaged over classes. ``masked_ce`` is the mean cross-entropy over the kept pixels.

Shapes: ``probs`` / ``logits`` (B, C, H, W); ``target`` (B, H, W) int64; ``mask`` (B, H, W) in [0, 1].
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_dice_loss(probs: Tensor, target: Tensor, mask: Tensor, smooth: float = 1e-5) -> Tensor:
    c = probs.shape[1]
    onehot = F.one_hot(target.long(), c).permute(0, 3, 1, 2).to(probs.dtype)
    m = mask.to(probs.dtype).unsqueeze(1)
    inter = (probs * onehot * m).sum(dim=(0, 2, 3))
    z = (probs * probs * m).sum(dim=(0, 2, 3))
    y = (onehot * onehot * m).sum(dim=(0, 2, 3))
    return (1 - (2 * inter + smooth) / (z + y + smooth)).mean()


def masked_ce(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    m = mask.float()
    return (ce * m).sum() / (m.sum() + 1e-16)


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the class probabilities (Mean Teacher's consistency)."""
    return ((student_logits.float().softmax(1) - teacher_logits.float().softmax(1)) ** 2).mean()


def confident_pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """(labels (B, H, W), confidence (B, H, W), keep mask = confidence >= threshold)."""
    probs = logits.detach().float().softmax(1)
    conf, labels = probs.max(1)
    return labels, conf, (conf >= threshold).float()
