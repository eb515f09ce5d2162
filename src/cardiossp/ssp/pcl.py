"""Positional contrastive learning, PCL (Zeng et al. 2021, "Positional Contrastive
Learning for Volumetric Medical Image Segmentation", https://arxiv.org/abs/2106.09157).

Like SimCLR, but every pair of slices whose relative positions (base -> apex, in [0, 1])
differ by less than ``threshold`` (0.1 in de Mooij et al. 2024) is a positive pair too.

Formulation (supervised-contrastive "L_out", Khosla et al. 2020; the same as the
authors' ``qcardia_models.losses.NTXentLoss``): with the 2N L2-normalised projections
z (both views of N slices), similarities s_ij = z_i . z_j / tau and, for anchor i,

    P(i) = {j != i : |p_i - p_j| < threshold}  U  {twin(i)}
    l_i  = -1/|P(i)| * sum_{j in P(i)} [ s_ij - log sum_{k != i} exp(s_ik) ]
    loss = mean_i l_i

The augmented twin is always positive (its position is identical, so for any threshold
> 0 this equals the authors' loss); with ``threshold = 0`` P(i) = {twin(i)} and the loss
is exactly NT-Xent (lightly's ``NTXentLoss``), tested. Under DDP the candidates
(projections and positions) are gathered from every process with gradient
(``lightly.utils.dist.gather``); each process averages over its own anchors, and DDP's
gradient averaging makes that the mean over all anchors. All processes must use the
same per-process batch size (``drop_last=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist as ldist
from torch import Tensor, nn

from ..errors import ConfigError
from .base import SSP_METHODS, fp32, no_autocast, require
from .simclr import SimCLR


def positive_mask(
    anchor_pos: Tensor, cand_pos: Tensor, self_idx: Tensor, twin_idx: Tensor, threshold: float
) -> Tensor:
    """(A, M) bool: candidate j is a positive of anchor a (never itself; always its twin).

    anchor_pos (A,), cand_pos (M,), self_idx / twin_idx (A,) long indices into M.
    """
    m = cand_pos.shape[0]
    close = (anchor_pos[:, None] - cand_pos[None, :]).abs() < threshold
    twin = F.one_hot(twin_idx, m).bool()
    self_ = F.one_hot(self_idx, m).bool()
    return (close | twin) & ~self_


def positional_contrastive_loss(
    anchors: Tensor,
    candidates: Tensor,
    anchor_pos: Tensor,
    cand_pos: Tensor,
    self_idx: Tensor,
    twin_idx: Tensor,
    temperature: float,
    threshold: float,
) -> Tensor:
    """Mean PCL loss over ``anchors`` (A, D) against ``candidates`` (M, D), both already
    L2-normalised; ``self_idx[a]`` / ``twin_idx[a]`` give the anchor's own and its
    twin's index among the candidates."""
    logits = anchors @ candidates.T / temperature  # (A, M)
    is_self = F.one_hot(self_idx, candidates.shape[0]).bool()
    logits = logits.masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positive_mask(anchor_pos, cand_pos, self_idx, twin_idx, threshold)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)
    return per_anchor.mean()


class PositionalContrastiveLoss(nn.Module):
    """PCL loss on two batches of projections.

    forward(out0 (N, D), out1 (N, D), positions (N,)) -> scalar; row i of out0 and out1
    are the two views of the slice at relative position positions[i].
    """

    def __init__(self, temperature: float = 0.1, threshold: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"PCL temperature must be > 0, got {temperature}")
        if not (0.0 <= threshold <= 1.0):
            raise ConfigError(f"PCL threshold must be in [0, 1], got {threshold}")
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.gather_distributed = gather_distributed

    def forward(self, out0: Tensor, out1: Tensor, positions: Tensor) -> Tensor:
        if out0.shape != out1.shape or out0.ndim != 2:
            raise ValueError(f"PCL needs two (N, D) tensors, got {tuple(out0.shape)} and {tuple(out1.shape)}")
        positions = positions.to(device=out0.device, dtype=torch.float32).reshape(-1)
        if positions.shape[0] != out0.shape[0]:
            raise ValueError(f"PCL: {positions.shape[0]} positions for {out0.shape[0]} samples")
        n = out0.shape[0]
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        if self.gather_distributed and ldist.world_size() > 1:
            all0, all1 = torch.cat(ldist.gather(out0)), torch.cat(ldist.gather(out1))
            all_pos = torch.cat(ldist.gather(positions))
            rank = ldist.rank()
        else:
            all0, all1, all_pos, rank = out0, out1, positions, 0
        total = all0.shape[0]
        local = torch.arange(n, device=out0.device) + rank * n
        return positional_contrastive_loss(
            anchors=torch.cat([out0, out1]),
            candidates=torch.cat([all0, all1]),
            anchor_pos=torch.cat([positions, positions]),
            cand_pos=torch.cat([all_pos, all_pos]),
            self_idx=torch.cat([local, local + total]),
            twin_idx=torch.cat([local + total, local]),
            temperature=self.temperature,
            threshold=self.threshold,
        )


@SSP_METHODS.register("pcl")
class PCL(SimCLR):
    """SimCLR with positional positives. Views: ``view0``, ``view1`` (B, 1, H, W),
    ``position`` (B,). Extra option: ``threshold`` (0.1)."""

    name = "pcl"
    transfers = "encoder"
    defaults = {**SimCLR.defaults, "threshold": 0.1}

    def make_criterion(self) -> nn.Module:
        return PositionalContrastiveLoss(
            temperature=float(self.cfg["temperature"]),
            threshold=float(self.cfg["threshold"]),
            gather_distributed=True,
        )

    def contrastive_loss(self, z0: Tensor, z1: Tensor, batch: dict) -> Tensor:
        """The PCL loss of projections ``z0``, ``z1`` (B, D), in float32 also under autocast."""
        (positions,) = require(batch, "position")
        z0, z1 = fp32(z0, z1)
        with no_autocast(z0):
            return self.criterion(z0, z1, torch.as_tensor(positions))
