"""Self-supervised pretraining methods as plug-ins with one contract (see ``base.py``).

Registered: ``simclr`` (Chen et al. 2020), ``pcl`` (Zeng et al. 2021), ``dino``
(Caron et al. 2021), ``mim`` (masked image modelling, de Mooij et al. 2024).
"""

from .base import SSP_METHODS, SSPMethod, build_method
from .dino import DINO
from .mim import MIM, masked_mse
from .pcl import PCL, PositionalContrastiveLoss, positional_contrastive_loss, positive_mask
from .simclr import SimCLR

__all__ = [
    "SSP_METHODS",
    "SSPMethod",
    "build_method",
    "SimCLR",
    "PCL",
    "DINO",
    "MIM",
    "PositionalContrastiveLoss",
    "positional_contrastive_loss",
    "positive_mask",
    "masked_mse",
]
