"""Lightning module for supervised segmentation (training from scratch and fine-tuning).

Loss: Dice + cross-entropy over the deep-supervision outputs, weights 1/2^i normalised
(SPEC §2). Optimiser (de Mooij et al. 2024, Appendix A; nnU-Net): SGD with Nesterov
momentum, polynomial decay ``lr * (1 - step/total)^0.9`` per iteration. Validation
reports nnU-Net's "pseudo Dice" per class: true/false positives and negatives summed
over every validation slice (all ranks), 2TP / (2TP + FP + FN). The honest per-subject 3D
Dice in the native grid is ``cardiossp evaluate``'s job.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from ..config import TrainConfig, from_dict, to_dict
from ..data.labels import CLASS_NAMES, NUM_CLASSES
from ..models import build_model
from .losses import DeepSupervisionLoss, DiceCELoss


def build_segmentation_model(cfg: TrainConfig) -> torch.nn.Module:
    m = cfg.model
    return build_model(m.name, in_channels=1, num_classes=NUM_CLASSES, n_stages=m.n_stages,
                       base_features=m.base_features, max_features=m.max_features, width=m.width,
                       norm=m.norm, deep_supervision=m.deep_supervision)


def poly_lr(step: int, total: int, power: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler factor at ``step`` of ``total``."""
    return (1 - min(step, total) / total) ** power


class SegmentationModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig | dict, total_steps: int = 1, lr: float | None = None):
        super().__init__()
        cfg_dict = cfg if isinstance(cfg, dict) else to_dict(cfg)
        self.save_hyperparameters({"cfg": cfg_dict, "total_steps": total_steps, "lr": lr})
        self.cfg = from_dict(TrainConfig, cfg_dict, "train") if isinstance(cfg, dict) else cfg
        self.model = build_segmentation_model(self.cfg)
        self.n_outputs = self.cfg.model.n_stages - 1 if self.cfg.model.deep_supervision else 1
        self.loss = DeepSupervisionLoss(DiceCELoss(), self.n_outputs)
        self.total_steps = max(1, total_steps)
        self.lr = lr if lr is not None else self.cfg.optim.lr
        self._val_stats: Tensor | None = None

    def forward(self, x: Tensor):
        return self.model(x)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.model(batch["image"])
        terms = self.loss.terms(out, batch["segmentation"])
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step}; "
                f"subjects in the batch: {sorted(set(batch.get('subject', [])))}"
            )
        bs = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log_dict({f"train_{k}": v for k, v in terms.items() if k != "loss"}, on_step=False, on_epoch=True,
                      batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_stats = torch.zeros(3, NUM_CLASSES - 1, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["image"])
        logits = out[0] if isinstance(out, (list, tuple)) else out
        target = batch["segmentation"]
        target = (target[0] if isinstance(target, (list, tuple)) else target)[:, 0]
        pred = logits.argmax(1)
        for c in range(1, NUM_CLASSES):
            p, t = pred == c, target == c
            self._val_stats[0, c - 1] += (p & t).sum()
            self._val_stats[1, c - 1] += (p & ~t).sum()
            self._val_stats[2, c - 1] += (~p & t).sum()

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if self.trainer.world_size > 1:
            stats = self.all_gather(stats).sum(0)
        tp, fp, fn = stats
        dice = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).float()
        for c in range(1, NUM_CLASSES):
            self.log(f"val_dice_{CLASS_NAMES[c]}", dice[c - 1], sync_dist=False)
        self.log("val_dice", dice.mean(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_lr(s, self.total_steps, o.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

