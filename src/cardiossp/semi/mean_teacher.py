"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017, https://arxiv.org/abs/1703.01780), as in
SSL4MIS's ``train_mean_teacher_2D.py`` (Luo et al.): the student sees labeled and unlabeled
slices in one forward pass; an EMA teacher sees the unlabeled slices plus Gaussian noise
(std 0.1, clipped to +-0.2); the consistency loss is the mean squared difference of the
softmax outputs, weighted ``0.1 x sigmoid_rampup`` (SSL4MIS ramps up over the whole run);
EMA momentum 0.99.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SEMI_METHODS, EMATeacher, SemiMethod, Step, Supervised, full_resolution, joint_forward, sigmoid_rampup
from .losses import softmax_mse


@SEMI_METHODS.register("mean-teacher")
class MeanTeacher(SemiMethod):
    name = "mean-teacher"
    defaults = {"weight": 0.1, "rampup_fraction": 1.0, "ema_momentum": 0.99, "noise_std": 0.1, "noise_clip": 0.2}

    def __init__(self, student: nn.Module, options: dict | None = None):
        super().__init__(student, options)
        self.teacher = EMATeacher(student)

    def training_terms(self, model: nn.Module, supervised: Supervised, labeled: dict, unlabeled: dict,
                       step: Step) -> dict[str, Tensor]:
        u = unlabeled["image"]
        outputs, nl, sup = joint_forward(model, supervised, labeled, unlabeled)
        c = self.cfg
        noise = (torch.randn(u.shape, generator=step.generator, device=u.device) * c["noise_std"]).clamp(
            -c["noise_clip"], c["noise_clip"])
        teacher_logits = self.teacher(u + noise.to(u.dtype))
        unsup = softmax_mse(full_resolution(outputs)[nl:], teacher_logits)
        w = c["weight"] * sigmoid_rampup(step.progress, c["rampup_fraction"])
        return {"loss": sup["loss"] + w * unsup, "sup": sup["loss"].detach(), "unsup": unsup.detach(),
                "unsup_weight": torch.tensor(w)}

    def on_train_batch_end(self, model: nn.Module, global_step: int) -> None:
        self.teacher.update(model, self.cfg["ema_momentum"], global_step)

