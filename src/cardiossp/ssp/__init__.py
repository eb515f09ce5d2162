"""Self-supervised pretraining methods as plug-ins with one contract (see ``base.py``).

Registered: ``simclr`` (Chen et al. 2020), ``pcl`` (Zeng et al. 2021), ``dino``
(Caron et al. 2021), ``mim`` (masked image modelling, de Mooij et al. 2024), ``position``
(anatomical position pretext, Bai et al. 2019), ``byol`` (Grill et al. 2020; as Saeed et al. 2022 use it).
"""

from .base import SSP_METHODS, SSPMethod, build_method
from .byol import BYOL
from .dino import DINO
from .mim import MIM, masked_mse
from .pcl import PCL, PositionalContrastiveLoss, positional_contrastive_loss, positive_mask
from .position import AnatomicalPosition, PositionPretext, position_pretext_loss
from .simclr import SimCLR

__all__ = [
    "BYOL",
    "DINO",
    "MIM",
    "PCL",
    "SSP_METHODS",
    "AnatomicalPosition",
    "PositionPretext",
    "PositionalContrastiveLoss",
    "SSPMethod",
    "SimCLR",
    "build_method",
    "masked_mse",
    "position_pretext_loss",
    "positional_contrastive_loss",
    "positive_mask",
]
