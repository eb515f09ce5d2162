"""DINO, self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers", https://arxiv.org/abs/2104.14294), on a U-Net
encoder as in de Mooij et al. 2024.

Student = U-Net encoder + pooled bottleneck + DINO head (3-layer MLP, hidden 2048,
bottleneck 256, weight-normalised last layer with 8192 outputs; batch norm in the head as
in the authors' CNN config). Teacher = deep copy of the student at initialisation,
``requires_grad=False``, updated only by EMA with momentum cosine 0.996 -> 1
(``on_train_batch_end``). Multi-crop: 2 global crops at the input size (teacher and
student) and 6 local crops at half size (student only). Loss: lightly's ``DINOLoss``
(student temperature 0.1; teacher temperature linear 0.02 -> 0.04 over the first 30 of
100 epochs, then 0.04; centre momentum 0.9; the centre is all-reduced under DDP). The
last head layer gets no update during the first epoch (``on_after_backward``).

Which network transfers: option ``transfer_from``, default ``"student"``, because the
authors' repository (q-cardIA/ssp-cmr-cine-segmentation, ``train_dino.py``) saves the
student's weights for fine-tuning. DINO's own paper evaluates the teacher
(``transfer_from="teacher"``).

Crops: area fractions (0.14, 1) global and (0.05, 0.14) local (DINO's ResNet-50 setting,
which the authors' config reproduces as zoom ranges); each crop then goes through the
preset augmentation at its size. DINO's extra blur / solarisation per global view is not
reproduced (the preset already blurs).
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import bottleneck_dim, pooled_bottleneck
from .base import (
    SSP_METHODS,
    BackboneFactory,
    SSPMethod,
    build_encoder,
    encoder_state,
    fp32,
    no_autocast,
    require,
)
from .schedules import ema_momentum, teacher_temperature
from .views import Augment, MultiCropViews, as_size, default_augment


@SSP_METHODS.register("dino")
class DINO(SSPMethod):
    """Views: ``global0..{n_global-1}`` (B,1,H,W), ``local0..{n_local-1}`` (B,1,H/2,W/2).

    Options (defaults = paper): ``head_hidden_dim`` 2048, ``head_bottleneck_dim`` 256,
    ``head_output_dim`` 8192, ``head_batch_norm`` True, ``norm_last_layer`` True,
    ``freeze_last_layer_epochs`` 1, ``student_temp`` 0.1, ``warmup_teacher_temp`` 0.02,
    ``teacher_temp`` 0.04, ``warmup_teacher_temp_epochs`` 30, ``epochs`` 100 (total
    pretraining epochs, only used to turn the warm-up into a fraction of training),
    ``center_momentum`` 0.9, ``momentum_start`` 0.996, ``momentum_end`` 1.0,
    ``n_global`` 2, ``n_local`` 6, ``local_size`` None (= input_size // 2),
    ``global_scale`` (0.14, 1.0), ``local_scale`` (0.05, 0.14), ``transfer_from``
    "student" | "teacher".
    """

    name = "dino"
    transfers = "encoder"
    defaults = {
        **SSPMethod.defaults,
        "head_hidden_dim": 2048,
        "head_bottleneck_dim": 256,
        "head_output_dim": 8192,
        "head_batch_norm": True,
        "norm_last_layer": True,
        "freeze_last_layer_epochs": 1,
        "student_temp": 0.1,
        "warmup_teacher_temp": 0.02,
        "teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 30,
        "epochs": 100,
        "center_momentum": 0.9,
        "momentum_start": 0.996,
        "momentum_end": 1.0,
        "n_global": 2,
        "n_local": 6,
        "local_size": None,
        "global_scale": (0.14, 1.0),
        "local_scale": (0.05, 0.14),
        "transfer_from": "student",
    }

    @classmethod
    def schedule_options(cls, epochs: int) -> dict:
        """``epochs`` = the run's, and the 30-epoch teacher-temperature warm-up clamped to it (it
        cannot be longer than a short run, e.g. the tiny / cpu presets)."""
        return {"epochs": int(epochs), "warmup_teacher_temp_epochs": min(cls.defaults["warmup_teacher_temp_epochs"],
                                                                         int(epochs))}

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        cfg: dict | None = None,
        augment: Augment | None = None,
        augment_local: Augment | None = None,
    ):
        super().__init__(backbone_factory, cfg, augment)
        c = self.cfg
        if c["transfer_from"] not in ("student", "teacher"):
            raise ConfigError(f"dino: transfer_from must be 'student' or 'teacher', got {c['transfer_from']!r}")
        if c["epochs"] <= 0 or not (0 <= c["warmup_teacher_temp_epochs"] <= c["epochs"]):
            raise ConfigError(
                f"dino: need 0 <= warmup_teacher_temp_epochs ({c['warmup_teacher_temp_epochs']}) "
                f"<= epochs ({c['epochs']}) and epochs > 0"
            )
        if c["n_global"] < 2 and c["n_local"] < 1:
            raise ConfigError("dino: need at least two views (n_global >= 2 or n_local >= 1)")
        self.local_size = as_size(c["local_size"] or (self.input_size[0] // 2, self.input_size[1] // 2))
        self.augment_local = augment_local or default_augment(c["augment"], self.local_size, c["augment_on_device"])

        self.student_backbone, self._key_map = build_encoder(backbone_factory)
        head_kwargs = dict(
            input_dim=bottleneck_dim(self.student_backbone),
            hidden_dim=int(c["head_hidden_dim"]),
            bottleneck_dim=int(c["head_bottleneck_dim"]),
            output_dim=int(c["head_output_dim"]),
            batch_norm=bool(c["head_batch_norm"]),
            freeze_last_layer=int(c["freeze_last_layer_epochs"]),
            norm_last_layer=bool(c["norm_last_layer"]),
        )
        self.student_head = DINOProjectionHead(**head_kwargs)
        # The teacher starts as an exact copy of the student. The head is copied via its
        # state dict: copy.deepcopy fails on modules using torch.nn.utils.weight_norm.
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = DINOProjectionHead(**head_kwargs)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=int(c["head_output_dim"]),
            warmup_teacher_temp=float(c["warmup_teacher_temp"]),
            teacher_temp=float(c["teacher_temp"]),
            warmup_teacher_temp_epochs=int(c["warmup_teacher_temp_epochs"]),
            student_temp=float(c["student_temp"]),
            center_momentum=float(c["center_momentum"]),
        )

    @property
    def view_maker(self) -> MultiCropViews:
        c = self.cfg
        return MultiCropViews(
            self.augment, self.augment_local, self.input_size, self.local_size,
            n_global=int(c["n_global"]), n_local=int(c["n_local"]),
            global_scale=tuple(c["global_scale"]), local_scale=tuple(c["local_scale"]),
        )  # fmt: skip

    def teacher_temp_at(self, progress: float) -> float:
        c = self.cfg
        return teacher_temperature(
            progress, c["warmup_teacher_temp"], c["teacher_temp"], c["warmup_teacher_temp_epochs"] / c["epochs"]
        )

    def momentum_at(self, progress: float) -> float:
        return ema_momentum(progress, self.cfg["momentum_start"], self.cfg["momentum_end"])

    def _embed(self, backbone: nn.Module, head: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """Same-size views (each (B,1,h,w)) in one pass -> list of (B, head_output_dim)."""
        return list(head(pooled_bottleneck(backbone, torch.cat(views))).chunk(len(views)))

    def forward_loss(self, batch: dict, progress: float) -> dict:
        c = self.cfg
        globals_ = require(batch, *[f"global{i}" for i in range(c["n_global"])])
        locals_ = require(batch, *[f"local{i}" for i in range(c["n_local"])])
        with torch.no_grad():
            teacher_out = self._embed(self.teacher_backbone, self.teacher_head, globals_)
        student_out = self._embed(self.student_backbone, self.student_head, globals_)
        if locals_:
            student_out += self._embed(self.student_backbone, self.student_head, locals_)
        temp = self.teacher_temp_at(progress)
        loss = self.distillation_loss(teacher_out, student_out, temp)
        return {"loss": loss, "teacher_temp": temp}

    def distillation_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], teacher_temp: float) -> Tensor:
        """lightly's ``DINOLoss`` (softmaxes, cross-entropies, centre update) in float32, also under autocast."""
        teacher_out, student_out = fp32(*teacher_out), fp32(*student_out)
        with no_autocast(student_out[0]):
            return self.criterion(teacher_out, student_out, teacher_temp=teacher_temp)

    def on_after_backward(self, epoch: int) -> None:
        self.student_head.cancel_last_layer_gradients(epoch)

    @torch.no_grad()
    def on_train_batch_end(self, progress: float) -> None:
        m = self.momentum_at(progress)
        update_momentum(self.student_backbone, self.teacher_backbone, m)
        update_momentum(self.student_head, self.teacher_head, m)

    def transferable_state(self) -> dict[str, Tensor]:
        source = self.teacher_backbone if self.cfg["transfer_from"] == "teacher" else self.student_backbone
        return encoder_state(source, self._key_map)
