"""BYOL, Bootstrap Your Own Latent (Grill et al. 2020, https://arxiv.org/abs/2006.07733), on a
U-Net encoder, as Saeed et al. use it (Saeed, Muhtaseb, Yaqub 2022, "Contrastive Pretraining
for Echocardiography Segmentation with Limited Data", MIUA; code
BioMedIA-MBZUAI/contrastive-echo).

Online network = U-Net encoder + pooled bottleneck + projection MLP (C -> 4096 -> 256, batch
norm, lightly's ``BYOLProjectionHead``) + prediction MLP (256 -> 4096 -> 256,
``BYOLPredictionHead``). Target network = deep copy of the online encoder and projection
at initialisation, ``requires_grad=False``, updated only by EMA with momentum cosine
0.996 -> 1 (``on_train_batch_end``; ``schedules.ema_momentum`` equals lightly's
``cosine_schedule`` at ``progress = step / (max_steps - 1)``). Each of the two augmented
views goes through both networks; the loss is the paper's symmetrised one,
``(2 - 2 cos(p0, sg(z1))) + (2 - 2 cos(p1, sg(z0)))`` averaged over the batch (lightly's
``NegativeCosineSimilarity`` is ``-cos``), the same as Saeed et al. 2022's ``loss_a + loss_b``.
The two views pass separately, as in lightly's and Saeed et al. 2022's code, so the heads' batch
norm sees one view at a time. The online encoder transfers (Saeed et al. 2022 load
``online_network.encoder``).

Defaults are the paper's and Saeed et al. 2022's (which use these heads and tau 0.996 through
pl_bolts); the optimiser lives in the pretraining presets.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor

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
from .schedules import ema_momentum
from .views import Augment, TwoViews


@SSP_METHODS.register("byol")
class BYOL(SSPMethod):
    """Views: ``view0``, ``view1`` (B, 1, H, W).

    Options (defaults = paper): ``proj_hidden_dim`` 4096, ``proj_output_dim`` 256,
    ``pred_hidden_dim`` 4096, ``momentum_start`` 0.996, ``momentum_end`` 1.0.
    """

    name = "byol"
    transfers = "encoder"
    defaults: ClassVar[dict] = {
        **SSPMethod.defaults,
        "proj_hidden_dim": 4096,
        "proj_output_dim": 256,
        "pred_hidden_dim": 4096,
        "momentum_start": 0.996,
        "momentum_end": 1.0,
    }

    def __init__(self, backbone_factory: BackboneFactory, cfg: dict | None = None, augment: Augment | None = None):
        super().__init__(backbone_factory, cfg, augment)
        c = self.cfg
        if not (0.0 <= c["momentum_start"] <= c["momentum_end"] <= 1.0):
            raise ConfigError(
                f"byol: need 0 <= momentum_start ({c['momentum_start']}) <= momentum_end ({c['momentum_end']}) <= 1"
            )
        self.online_backbone, self._key_map = build_encoder(backbone_factory)
        out_dim = int(c["proj_output_dim"])
        self.online_projection = BYOLProjectionHead(
            bottleneck_dim(self.online_backbone), int(c["proj_hidden_dim"]), out_dim
        )
        self.online_prediction = BYOLPredictionHead(out_dim, int(c["pred_hidden_dim"]), out_dim)
        self.target_backbone = copy.deepcopy(self.online_backbone)
        self.target_projection = copy.deepcopy(self.online_projection)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection)
        self.criterion = NegativeCosineSimilarity()

    @property
    def view_maker(self) -> TwoViews:
        return TwoViews(self.augment)

    def momentum_at(self, progress: float) -> float:
        return ema_momentum(progress, self.cfg["momentum_start"], self.cfg["momentum_end"])

    def online(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> predictions p (B, proj_output_dim)."""
        return self.online_prediction(self.online_projection(pooled_bottleneck(self.online_backbone, x)))

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> target projections z (B, proj_output_dim), no gradient."""
        return self.target_projection(pooled_bottleneck(self.target_backbone, x))

    def forward_loss(self, batch: dict, progress: float) -> dict:
        v0, v1 = require(batch, "view0", "view1")
        p0, p1 = self.online(v0), self.online(v1)
        z0, z1 = self.target(v0), self.target(v1)
        loss = self.byol_loss(p0, p1, z0, z1)
        p0, p1, z0, z1 = fp32(p0, p1, z0, z1)
        with torch.no_grad():
            z_std = F.normalize(torch.cat([z0, z1]), dim=1).std(0).mean().item()  # collapse -> 0
        return {"loss": loss, "momentum": self.momentum_at(progress), "target_std": z_std}

    def byol_loss(self, p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
        """``(2 - 2 cos(p0, z1)) + (2 - 2 cos(p1, z0))``, batch mean, in float32 also under autocast."""
        p0, p1, z0, z1 = fp32(p0, p1, z0, z1)
        with no_autocast(p0):
            return 4.0 + 2.0 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    @torch.no_grad()
    def on_train_batch_end(self, progress: float) -> None:
        m = self.momentum_at(progress)
        update_momentum(self.online_backbone, self.target_backbone, m)
        update_momentum(self.online_projection, self.target_projection, m)

    def transferable_state(self) -> dict[str, Tensor]:
        return encoder_state(self.online_backbone, self._key_map)
