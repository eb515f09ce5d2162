"""UniMatch (Yang, Qi, Feng, Zhang & Shi, CVPR 2023, https://arxiv.org/abs/2208.09910), as in
the authors' medical code (``more-scenarios/medical/unimatch.py``, ACDC):

* pseudo-labels from the prediction on the weak view (no gradient through them), kept where
  the confidence is >= 0.95;
* two strong views (``perturb.strong_intensity``), each mixed by CutMix with the strong view of
  another unlabeled slice of the batch (its pseudo-labels and confidence mixed by the same box;
  the authors draw the partner from a second unlabeled loader, we take the batch rolled by one);
* a feature-perturbation branch: the decoder run on the encoder features after Dropout2d(0.5),
  on the weak view;
* ``loss = (sup + 0.25 u_s1 + 0.25 u_s2 + 0.5 u_fp) / 2`` with UniMatch's masked Dice
  (``losses.masked_dice_loss``) for every unsupervised term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import decode_features, encoder_features
from .base import SEMI_METHODS, SemiMethod, Step, Supervised, full_resolution, rows
from .losses import confident_pseudo_labels, masked_dice_loss
from .perturb import cutmix_boxes, mix, strong_intensity


@SEMI_METHODS.register("unimatch")
class UniMatch(SemiMethod):
    name = "unimatch"
    defaults = {"threshold": 0.95, "fp_dropout": 0.5, "cutmix_p": 0.5, "jitter_p": 0.8, "jitter": 0.5,
                "blur_p": 0.5, "weight_strong": 0.5, "weight_fp": 0.5}

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        c, g = self.cfg, step.generator
        x, uw = labeled["image"], unlabeled["image"]
        nl, nu = x.shape[0], uw.shape[0]
        h, w = uw.shape[-2:]
        # weak pass (labeled + unlabeled) and the feature-perturbed pass of the same features
        feats = encoder_features(model, torch.cat([x, uw]))
        outputs = decode_features(model, feats, x.shape[-2:])
        dropped = [F.dropout2d(f[nl:], p=c["fp_dropout"], training=True) for f in feats]
        logits_fp = full_resolution(decode_features(model, dropped, x.shape[-2:]))
        sup = supervised(rows(outputs, slice(0, nl)), labeled["segmentation"])
        logits_w = full_resolution(outputs)[nl:].detach()
        labels, conf, _ = confident_pseudo_labels(logits_w, c["threshold"])
        # strong views, CutMix with the rolled batch
        s1 = strong_intensity(uw, g, c["jitter_p"], c["jitter"], c["blur_p"])
        s2 = strong_intensity(uw, g, c["jitter_p"], c["jitter"], c["blur_p"])
        box1 = cutmix_boxes(nu, h, w, g, uw.device, p=c["cutmix_p"])
        box2 = cutmix_boxes(nu, h, w, g, uw.device, p=c["cutmix_p"])
        s1, s2 = mix(s1.roll(1, 0), s1, box1), mix(s2.roll(1, 0), s2, box2)
        lab1, conf1 = mix(labels.roll(1, 0), labels, box1), mix(conf.roll(1, 0), conf, box1)
        lab2, conf2 = mix(labels.roll(1, 0), labels, box2), mix(conf.roll(1, 0), conf, box2)
        logits_s1, logits_s2 = full_resolution(model(torch.cat([s1, s2]))).float().chunk(2)
        t = c["threshold"]
        u_s1 = masked_dice_loss(logits_s1.softmax(1), lab1, (conf1 >= t).float())
        u_s2 = masked_dice_loss(logits_s2.softmax(1), lab2, (conf2 >= t).float())
        u_fp = masked_dice_loss(logits_fp.float().softmax(1), labels, (conf >= t).float())
        ws, wf = c["weight_strong"], c["weight_fp"]
        unsup = ws * (u_s1 + u_s2) / 2 + wf * u_fp
        return {"loss": (sup["loss"] + unsup) / 2, "sup": sup["loss"].detach(), "unsup": unsup.detach(),
                "u_s1": u_s1.detach(), "u_fp": u_fp.detach(), "confident": (conf >= t).float().mean()}
