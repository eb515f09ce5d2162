"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", https://arxiv.org/abs/2002.05709) on a U-Net encoder.

As in de Mooij et al. 2024: two augmented views per slice; the bottleneck of the U-Net
encoder is global-average-pooled and fed to a projection MLP with 3 linear layers
(C -> 512 -> 512 -> 512, ReLU, no batch norm, as in the authors' ``EncoderMLP2d``);
NT-Xent loss with temperature 0.1, negatives gathered across processes under DDP
(lightly's ``NTXentLoss(gather_distributed=True)``). Only the encoder transfers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
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
from .views import Augment, TwoViews


@SSP_METHODS.register("simclr")
class SimCLR(SSPMethod):
    """Views: ``view0``, ``view1`` (B, 1, H, W). Loss: NT-Xent on projections (B, D).

    Options: ``temperature`` (0.1), ``proj_hidden_dim`` (512), ``proj_output_dim`` (512),
    ``proj_layers`` (3 linear layers), ``proj_batch_norm`` (False).
    """

    name = "simclr"
    transfers = "encoder"
    defaults = {
        **SSPMethod.defaults,
        "temperature": 0.1,
        "proj_hidden_dim": 512,
        "proj_output_dim": 512,
        "proj_layers": 3,
        "proj_batch_norm": False,
    }

    def __init__(self, backbone_factory: BackboneFactory, cfg: dict | None = None, augment: Augment | None = None):
        super().__init__(backbone_factory, cfg, augment)
        c = self.cfg
        if c["temperature"] <= 0:
            raise ConfigError(f"{self.name}: temperature must be > 0, got {c['temperature']}")
        if c["proj_layers"] < 2:
            raise ConfigError(f"{self.name}: proj_layers must be >= 2, got {c['proj_layers']}")
        self.encoder, self._key_map = build_encoder(backbone_factory)
        self.projection_head = SimCLRProjectionHead(
            input_dim=bottleneck_dim(self.encoder),
            hidden_dim=int(c["proj_hidden_dim"]),
            output_dim=int(c["proj_output_dim"]),
            num_layers=int(c["proj_layers"]),
            batch_norm=bool(c["proj_batch_norm"]),
        )
        self.criterion = self.make_criterion()

    def make_criterion(self) -> nn.Module:
        return NTXentLoss(temperature=float(self.cfg["temperature"]), gather_distributed=True)

    @property
    def view_maker(self) -> TwoViews:
        return TwoViews(self.augment)

    def embed(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> projections (B, proj_output_dim)."""
        return self.projection_head(pooled_bottleneck(self.encoder, x))

    def contrastive_loss(self, z0: Tensor, z1: Tensor, batch: dict) -> Tensor:
        """The loss of projections ``z0``, ``z1`` (B, D), in float32 also under autocast."""
        z0, z1 = fp32(z0, z1)
        with no_autocast(z0):
            return self.criterion(z0, z1)

    def forward_loss(self, batch: dict, progress: float) -> dict:
        v0, v1 = require(batch, "view0", "view1")
        z0, z1 = self.embed(torch.cat([v0, v1])).chunk(2)
        loss = self.contrastive_loss(z0, z1, batch)
        with torch.no_grad():
            twin_cos = F.cosine_similarity(*fp32(z0, z1), dim=1).mean().item()
        return {"loss": loss, "twin_cos": twin_cos}

    def transferable_state(self) -> dict[str, Tensor]:
        return encoder_state(self.encoder, self._key_map)
