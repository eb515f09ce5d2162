"""Anatomical position pretext task (after Bai et al. 2019, "Self-Supervised Learning for
Cardiac MR Image Segmentation by Anatomical Position Prediction", MICCAI,
https://arxiv.org/abs/1907.02757): the encoder learns to predict where a slice lies, with
labels that come from the acquisition geometry alone (no annotation is read).

Bai et al. cut each view into regions by the lines where the other standard planes
intersect it and predict those regions. A slice cache keeps one geometry per stack, so the
targets here are per slice (``cardiossp.data.datasets`` puts them in every sample):

* **position bin** - the relative slice position base (0) -> apex (1) of the short-axis
  stack (``data.preprocess.infer_apex_first``) cut into ``position_bins`` equal bins
  (default 5). Only short-axis slices (``view == "SA"``) have one; others are ignored.
  Classes rather than a regressed number: neighbouring slices are ~10 mm apart and the
  stack's first and last slices depend on where the operator placed them, so the label
  is no finer than a few bins; the cross-entropy matches Bai et al.'s classification.
* **view** - the imaging plane, one of ``VIEWS`` (SA short axis, LA long axis, 2CH / 3CH /
  4CH chamber views) from the cache's ``view`` column, which readers take from the
  acquisition's file names (M&Ms-2: SA, LA; CAMUS: 2CH, 4CH); other names are ignored.
  Cross-entropy.
* **plane normal** (off by default, ``normal_weight`` 0) - the unit normal of the slice
  plane in world coordinates from the affine's direction cosines
  (``data.datasets.plane_normal``; NaN, so ignored, where the affine holds no orientation,
  as in ACDC). Short- and long-axis planes of M&Ms-2 subject 001 are 84 degrees apart, so
  within one release it tells the views apart and adds each stack's obliquity. Loss
  ``sin^2`` of the angle, ``1 - cos^2``: blind to the sign (n and -n are the same plane; a
  flipped image mirrors it), smooth, in [0, 1]. Off by default because releases disagree
  on the world frame: in M&Ms the RV centroid lies right-anterior of the LV centroid
  (RAS, as it should), in M&Ms-2 left-posterior (x and y negated), so on the paper's
  M&Ms + M&Ms-2 mix the same anatomy would get two different normals. Turn it on for
  pretraining on one release.

Loss = ``position_weight * CE(bins) + view_weight * CE(view) + normal_weight * mean sin^2``;
each term is the mean over the samples that have that target (0 when none has). Head:
pooled bottleneck -> Linear(C, hidden) -> ReLU -> Linear(hidden, bins + 5 views + 3). One
augmented view per slice; the preset augmentation keeps every target (in-plane rotation,
scaling and intensity change none; a flip only the normal's sign). Only the encoder
transfers; the head is kept for SSL+MultiTask fine-tuning (``train.transfer``, strategy
``multitask``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import bottleneck_dim, pool_features
from .base import (
    SSP_METHODS,
    BackboneFactory,
    SSPMethod,
    build_encoder,
    encoder_state,
    require,
)
from .views import Augment, apply, check_sample

IGNORE = -1  # class target of a slice without that target
VIEWS = ("SA", "LA", "2CH", "3CH", "4CH")
PRETEXT_OPTIONS = ("position_bins", "hidden_dim", "position_weight", "view_weight", "normal_weight")


def position_bins(position: Tensor, short_axis: Tensor, n_bins: int) -> Tensor:
    """(B,) positions in [0, 1] -> long bins ``min(floor(p * n_bins), n_bins - 1)``; ``IGNORE``
    where ``short_axis`` is False."""
    bins = (position.float() * n_bins).floor().long().clamp(0, n_bins - 1)
    return torch.where(short_axis, bins, torch.full_like(bins, IGNORE))


def view_classes(views) -> Tensor:
    """View names -> (B,) long index into ``VIEWS``; ``IGNORE`` for other names."""
    return torch.tensor(
        [VIEWS.index(v) if v in VIEWS else IGNORE for v in (str(v).upper() for v in views)], dtype=torch.long
    )


def pretext_targets(batch: dict, n_bins: int, device: torch.device | None = None) -> dict[str, Tensor]:
    """``{"bins": (B,) long, "views": (B,) long, "normals": (B, 3) float (NaN rows = unknown)}``.

    A batch without ``view`` counts as short axis; without ``plane_normal``, normals are unknown.
    """
    (position,) = require(batch, "position")
    position = torch.as_tensor(position, dtype=torch.float32, device=device).reshape(-1)
    views = batch.get("view")
    if views is None:
        views = ["SA"] * position.shape[0]
    elif isinstance(views, str):
        views = [views]
    view_idx = view_classes(views).to(position.device)
    normals = batch.get("plane_normal")
    if normals is None:
        normals = torch.full((position.shape[0], 3), math.nan, device=position.device)
    normals = torch.as_tensor(normals, dtype=torch.float32, device=position.device).reshape(-1, 3)
    if not (len(view_idx) == normals.shape[0] == position.shape[0]):
        raise ValueError(
            f"position pretext: {position.shape[0]} positions, {len(view_idx)} views, "
            f"{normals.shape[0]} normals in one batch"
        )
    bins = position_bins(position, view_idx == VIEWS.index("SA"), n_bins)
    return {"bins": bins, "views": view_idx, "normals": normals}


def _class_term(logits: Tensor, target: Tensor, name: str, out: dict) -> Tensor | None:
    """Cross-entropy over the samples whose target is not IGNORE (and their accuracy)."""
    keep = target != IGNORE
    if not keep.any():
        return None
    logits = logits[keep].float()
    out[f"{name}_ce"] = F.cross_entropy(logits, target[keep])
    out[f"{name}_acc"] = (logits.argmax(1) == target[keep]).float().mean().detach()
    return out[f"{name}_ce"]


def position_pretext_loss(
    bin_logits: Tensor,
    view_logits: Tensor,
    normal_pred: Tensor,
    targets: dict[str, Tensor],
    position_weight: float = 1.0,
    view_weight: float = 1.0,
    normal_weight: float = 0.0,
) -> dict[str, Tensor]:
    """``{"loss", "position_ce", "position_acc", "view_ce", "view_acc", "normal_sin2"}``
    (``targets`` from :func:`pretext_targets`); a term is present only when some sample has
    its target and its weight is not 0. ``loss`` always depends on every output (x 0 when
    a term is absent), so every head parameter gets a gradient (DDP needs that)."""
    loss = 0.0 * (bin_logits.sum() + view_logits.sum() + normal_pred.sum())
    out: dict[str, Tensor] = {}
    for logits, target, name, weight in (
        (bin_logits, targets["bins"], "position", position_weight),
        (view_logits, targets["views"], "view", view_weight),
    ):
        term = _class_term(logits, target, name, out) if weight else None
        if term is not None:
            loss = loss + weight * term
    normals = targets["normals"]
    has_normal = torch.isfinite(normals).all(1)
    if normal_weight and has_normal.any():
        cos = F.cosine_similarity(normal_pred[has_normal].float(), normals[has_normal], dim=1, eps=1e-8)
        out["normal_sin2"] = (1.0 - cos.pow(2)).mean()
        loss = loss + normal_weight * out["normal_sin2"]
    return {"loss": loss, **out}


class PositionPretext(nn.Module):
    """Head and loss of the pretext, shared by pretraining and SSL+MultiTask fine-tuning.

    ``forward(encoder_output, batch) -> position_pretext_loss(...)`` dict of tensors.
    """

    def __init__(
        self,
        in_dim: int,
        position_bins: int = 5,
        hidden_dim: int = 256,
        position_weight: float = 1.0,
        view_weight: float = 1.0,
        normal_weight: float = 0.0,
    ):
        super().__init__()
        if position_bins < 2 or hidden_dim < 1:
            raise ConfigError(
                f"position: need position_bins >= 2 and hidden_dim >= 1, got {position_bins}, {hidden_dim}"
            )
        weights = (float(position_weight), float(view_weight), float(normal_weight))
        if min(weights) < 0 or sum(weights) == 0:
            raise ConfigError(f"position: position/view/normal weights must be >= 0, not all 0; got {weights}")
        self.n_bins = int(position_bins)
        self.position_weight, self.view_weight, self.normal_weight = weights
        self.head = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, self.n_bins + len(VIEWS) + 3)
        )

    def predict(self, encoder_output) -> tuple[Tensor, Tensor, Tensor]:
        """(bin logits (B, bins), view logits (B, len(VIEWS)), normal (B, 3), not normalised)."""
        out = self.head(pool_features(encoder_output))
        return out[:, : self.n_bins], out[:, self.n_bins : -3], out[:, -3:]

    def forward(self, encoder_output, batch: dict) -> dict[str, Tensor]:
        bin_logits, view_logits, normal = self.predict(encoder_output)
        targets = pretext_targets(batch, self.n_bins, bin_logits.device)
        return position_pretext_loss(
            bin_logits, view_logits, normal, targets, self.position_weight, self.view_weight, self.normal_weight
        )


def build_pretext(in_dim: int, options: dict) -> PositionPretext:
    return PositionPretext(in_dim, **{k: options[k] for k in PRETEXT_OPTIONS})


class PositionViews:
    """One augmented view and the geometry targets: ``{"image": (1,h,w), "position": (),
    "view": str, "plane_normal": (3,), "subject": str}`` (defaults "SA" and NaN normal)."""

    def __init__(self, augment: Augment):
        self.augment = augment

    def __call__(self, sample: dict) -> dict:
        image, position, subject = check_sample(sample)
        normal = sample.get("plane_normal")
        normal = torch.full((3,), math.nan) if normal is None else torch.as_tensor(normal, dtype=torch.float32)
        return {
            "image": apply(self.augment, image),
            "position": position,
            "view": str(sample.get("view", "SA")),
            "plane_normal": normal.reshape(3).float(),
            "subject": subject,
        }


@SSP_METHODS.register("position")
class AnatomicalPosition(SSPMethod):
    """Views: ``image`` (B,1,H,W), ``position`` (B,), ``view`` [B str], ``plane_normal`` (B,3).

    Options: ``position_bins`` (5), ``hidden_dim`` (256), ``position_weight`` (1.0),
    ``view_weight`` (1.0), ``normal_weight`` (0.0).
    """

    name = "position"
    transfers = "encoder"
    all_views = True  # the view target needs long-axis slices too
    multitask = True  # SSL+MultiTask: its pretext loss works on labeled slices too
    defaults: ClassVar[dict] = {
        **SSPMethod.defaults,
        "position_bins": 5,
        "hidden_dim": 256,
        "position_weight": 1.0,
        "view_weight": 1.0,
        "normal_weight": 0.0,
    }

    def __init__(self, backbone_factory: BackboneFactory, cfg: dict | None = None, augment: Augment | None = None):
        super().__init__(backbone_factory, cfg, augment)
        self.encoder, self._key_map = build_encoder(backbone_factory)
        self.pretext = build_pretext(bottleneck_dim(self.encoder), self.cfg)

    @property
    def view_maker(self) -> PositionViews:
        return PositionViews(self.augment)

    def forward_loss(self, batch: dict, progress: float) -> dict:
        (image,) = require(batch, "image")
        out = self.pretext(self.encoder(image), batch)
        return {"loss": out.pop("loss"), **{k: float(v.detach()) for k, v in out.items()}}

    def transferable_state(self) -> dict[str, Tensor]:
        return encoder_state(self.encoder, self._key_map)

    def extra_record(self) -> dict:
        """``{"pretext": pretext_record()}``: the head, for SSL+MultiTask fine-tuning."""
        return {"pretext": self.pretext_record()}

    def pretext_record(self) -> dict:
        """The head for SSL+MultiTask: ``{"options": {...}, "state_dict": {...}}``."""
        return {
            "options": {k: self.cfg[k] for k in PRETEXT_OPTIONS},
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.pretext.state_dict().items()},
        }
