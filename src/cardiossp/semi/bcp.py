"""Bidirectional Copy-Paste (Bai, Chen, Li, Shen & Wang, CVPR 2023, https://arxiv.org/abs/2305.00673),
as in the authors' ``ACDC_BCP_train.py``:

* a warm start on the labeled slices alone (the authors pre-train 10k of 40k iterations;
  ``warmup_fraction`` here), after which an EMA teacher is copied from the student (momentum 0.99 from
  then on). The authors' warm start copy-pastes labeled ``b`` into labeled ``a`` by the same box, targets
  mixed alike, both regions weighing 1 (``warmup_copy_paste: true``; its student sees half the labeled
  batch). Off by default: the plan's recipe (``long+bcp``) was measured with the plain supervised warm
  start (the supervised loss on the whole labeled batch); the authors' (arm ``long-cpwarm+bcp``) gave 0.849
  against 0.865 on seed 0 at 5 labeled subjects, no gain (docs/RESULTS.md);
* each step the labeled and unlabeled batches are halved into (a, b); a box of 2/3 of each side
  (``perturb.copy_paste_mask``: 0 inside, 1 outside) pastes labeled ``a`` into unlabeled ``a``
  and unlabeled ``b`` into labeled ``b``;
* targets are mixed the same way from the ground truth and the teacher's pseudo-labels (argmax,
  then the largest connected component of each class, the authors' ``get_ACDC_masks``); pixels
  whose target is a pseudo-label weigh ``u_weight`` = 0.5, ground-truth pixels 1;
* ``loss = (Dice + CE) / 2`` of both mixed images with BCP's masked Dice (every deep-supervision
  output, targets downsampled by nearest neighbour, weights as the supervised loss).

Odd batch halves: ``a`` takes the larger half of each batch and pairs are cut to the shorter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.labels import keep_largest_component
from ..train.losses import deep_supervision_weights
from .base import SEMI_METHODS, EMATeacher, SemiMethod, Step, Supervised
from .losses import masked_ce, masked_dice_loss
from .perturb import copy_paste_mask, mix


def largest_component_per_class(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) label maps with each foreground class cut to its largest connected component."""
    classes = tuple(range(1, num_classes))
    return torch.stack([keep_largest_component(lab.cpu(), classes).to(labels.device) for lab in labels])


def mix_loss(logits: Tensor, image_target: Tensor, patch_target: Tensor, mask: Tensor, image_weight: float,
             patch_weight: float) -> tuple[Tensor, Tensor]:
    """BCP's ``mix_loss``: (Dice, CE) with ``image_target`` where ``mask`` is 1 and ``patch_target`` in the box."""
    probs = logits.float().softmax(1)
    box = 1 - mask
    dice = image_weight * masked_dice_loss(probs, image_target, mask) \
        + patch_weight * masked_dice_loss(probs, patch_target, box)
    ce = image_weight * masked_ce(logits, image_target, mask) + patch_weight * masked_ce(logits, patch_target, box)
    return dice, ce


def _down(t: Tensor, size) -> Tensor:
    if t.shape[-2:] == tuple(size):
        return t
    return F.interpolate(t[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(t.dtype)


def mixed_loss(outputs, mask: Tensor, targets: list[tuple[Tensor, Tensor, float, float]]) -> Tensor:
    """``(Dice + CE) / 2`` of copy-pasted images over every deep-supervision output (weights as the
    supervised loss, targets downsampled by nearest neighbour). The outputs' batch holds one chunk per
    ``(image_target, patch_target, image_weight, patch_weight)`` of ``targets``, in order."""
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    weights = deep_supervision_weights(len(outputs)) if len(outputs) > 1 else [1.0]
    dice = ce = 0.0
    for wgt, o in zip(weights, outputs):
        if wgt == 0:
            continue
        size = o.shape[-2:]
        m = _down(mask, size).float()
        for chunk, (image_t, patch_t, iw, pw) in zip(o.chunk(len(targets)), targets):
            d, e = mix_loss(chunk, _down(image_t, size), _down(patch_t, size), m, iw, pw)
            dice, ce = dice + wgt * d, ce + wgt * e
    return (dice + ce) / 2


@SEMI_METHODS.register("bcp")
class BCP(SemiMethod):
    name = "bcp"
    defaults = {"warmup_fraction": 0.2, "u_weight": 0.5, "ema_momentum": 0.99, "box_fraction": 2 / 3,
                "largest_component": True, "warmup_copy_paste": False}

    def __init__(self, student: nn.Module, options: dict | None = None):
        super().__init__(student, options)
        self.teacher = EMATeacher(student)
        self.register_buffer("teacher_started", torch.zeros((), dtype=torch.bool))

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        c = self.cfg
        x, u = labeled["image"], unlabeled["image"]
        seg = labeled["segmentation"]
        y = (seg[0] if isinstance(seg, (list, tuple)) else seg)[:, 0]
        if step.progress < c["warmup_fraction"]:
            if c["warmup_copy_paste"]:
                return self._labeled_copy_paste(model, x, y, step)
            sup = supervised(model(x), seg)
            return {"loss": sup["loss"], "sup": sup["loss"].detach(), "unsup": torch.zeros(())}
        if not bool(self.teacher_started):
            self.teacher.copy_from(model)
            self.teacher_started.fill_(True)
        ha, hu = (x.shape[0] + 1) // 2, (u.shape[0] + 1) // 2
        n = min(ha, hu, x.shape[0] - ha, u.shape[0] - hu) or 1
        xa, xb, ya, yb = x[:n], x[ha:ha + n], y[:n], y[ha:ha + n]
        ua, ub = u[:n], u[hu:hu + n]
        if xb.shape[0] == 0:  # a batch of one labeled slice: pair it with itself
            xb, yb = xa, ya
        if ub.shape[0] == 0:
            ub = ua
        with torch.no_grad():
            t_logits = self.teacher(torch.cat([ua, ub]))
            plab = t_logits.argmax(1)
            if c["largest_component"]:
                plab = largest_component_per_class(plab, t_logits.shape[1])
            pa, pb = plab.chunk(2)
        h, w = x.shape[-2:]
        mask = copy_paste_mask(h, w, step.generator, x.device, c["box_fraction"])[None].expand(xa.shape[0], h, w)
        in_unl = mix(ua, xa, mask)  # unlabeled a outside the box, labeled a inside
        in_lab = mix(xb, ub, mask)  # labeled b outside the box, unlabeled b inside
        uw = c["u_weight"]
        loss = mixed_loss(model(torch.cat([in_unl, in_lab])), mask,
                          [(pa, ya, uw, 1.0), (yb, pb, 1.0, uw)])
        return {"loss": loss, "sup": torch.zeros(()), "unsup": loss.detach()}

    def _labeled_copy_paste(self, model: nn.Module, x: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        """The authors' warm start: labeled ``a`` outside the box, labeled ``b`` inside, targets alike."""
        ha = (x.shape[0] + 1) // 2
        n = min(ha, x.shape[0] - ha) or 1
        xa, ya = x[:n], y[:n]
        xb, yb = (x[ha:ha + n], y[ha:ha + n]) if x.shape[0] > 1 else (xa, ya)
        h, w = x.shape[-2:]
        mask = copy_paste_mask(h, w, step.generator, x.device, self.cfg["box_fraction"])[None].expand(n, h, w)
        loss = mixed_loss(model(mix(xa, xb, mask)), mask, [(ya, yb, 1.0, 1.0)])
        return {"loss": loss, "sup": loss.detach(), "unsup": torch.zeros(())}

    def on_train_batch_end(self, model: nn.Module, global_step: int) -> None:
        if bool(self.teacher_started):
            self.teacher.update(model, self.cfg["ema_momentum"])
