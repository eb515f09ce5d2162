"""Lightning module for supervised segmentation (training from scratch and fine-tuning).

Loss: Dice + cross-entropy over the deep-supervision outputs, weights 1/2^i normalised.
With ``cfg.semi.method`` a batch is ``{"labeled": ..., "unlabeled": ...}`` and the
semi-supervised method (``cardiossp.semi``) turns both into the step's loss.
Optimiser (de Mooij et al. 2024, Appendix A; nnU-Net): SGD with Nesterov momentum,
polynomial decay ``lr * (1 - step/total)^0.9`` per iteration. Validation
reports nnU-Net's "pseudo Dice" per class: true/false positives and negatives summed
over every validation slice (all ranks), 2TP / (2TP + FP + FN). The honest per-subject 3D
Dice in the native grid is ``cardiossp evaluate``'s job.

Every checkpoint the module saves (``best.ckpt``, ``last.ckpt``) carries ``checkpoint["cardiossp"]``, the
``model_record`` the run function gave ``describe``: what a user of the model needs besides its weights
(input grid, normalisation, labels, task, model config, version, git SHA), in plain types only, so that
``torch.load(weights_only=True)`` reads it and the model works without the training cache.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from ..checkpoints import RECORD_KEY  # the checkpoint entry holding the model record
from ..config import TrainConfig, from_dict, to_dict
from ..data.batch_augment import apply_batch, spatial_only
from ..data.labels import CLASS_NAMES, task_class_names, task_classes, task_lut, task_num_classes
from ..errors import ConfigError
from ..models import build_from_config, deep_supervision_scales
from .losses import DeepSupervisionLoss, DiceCELoss


def build_segmentation_model(cfg: TrainConfig, load_encoder_weights: bool = True) -> torch.nn.Module:
    """The registered model ``cfg.model.name`` for the task's classes; ``cfg.model.encoder_weights`` is
    loaded unless ``load_encoder_weights`` is False (restoring a checkpoint replaces every weight anyway)."""
    return build_from_config(cfg.model, task_num_classes(cfg.data.task), load_encoder_weights=load_encoder_weights)


def count_outputs(model: torch.nn.Module, deep_supervision: bool) -> int:
    """Outputs the model produces in training: one per deep-supervision scale, or 1 (DS off or none)."""
    scales = deep_supervision_scales(model) if deep_supervision else None
    return len(scales) if scales else 1


RECORD_FORMAT = "cardiossp-model-1"
LABEL_CONVENTION = "0 background, 1 LV, 2 MYO, 3 RV"


def model_record(cfg: TrainConfig, spacing: float, size: int, version: str | None = None,
                 git_sha: str | None = None) -> dict:
    """The self-description of a segmentation model trained on a cache of ``spacing`` mm / ``size`` px
    (``data.preprocess``; ``version`` / ``git_sha`` default to this code's)::

        format          "cardiossp-model-1"
        task            data.task ("cardiac", "lv")
        grid            {"spacing_mm", "size_px", "resample", "input"}: the in-plane grid every slice goes to
        normalisation   {"method": "zscore", "over", "eps"}: as the cache (``preprocess.zscore``)
        labels          {"convention", "class_names" (index = network output channel), "internal_labels"
                        (output channel -> internal label value)}
        num_classes     output channels, background included
        model           the model config (``config.ModelConfig`` as a dict)
        cardiossp_version, git_sha
    """
    from .. import __version__
    from ..config import git_sha as current_sha

    classes = task_classes(cfg.data.task)
    return {
        "format": RECORD_FORMAT,
        "task": cfg.data.task,
        "grid": {"spacing_mm": float(spacing), "size_px": int(size),
                 "resample": "in-plane bilinear (antialiased when shrinking) to spacing_mm, then centre crop / "
                             "pad to size_px x size_px; through-plane untouched",
                 "input": "(N, 1, size_px, size_px) float32 short-axis slices"},
        "normalisation": {"method": "zscore", "over": "the whole image of a subject (every frame and slice of "
                          "the cine), before resampling", "eps": 1e-8},
        "labels": {"convention": LABEL_CONVENTION, "class_names": ["background", *(CLASS_NAMES[c] for c in classes)],
                   "internal_labels": [0, *classes]},
        "num_classes": task_num_classes(cfg.data.task),
        "model": to_dict(cfg.model),
        "cardiossp_version": version or __version__,
        "git_sha": git_sha or current_sha(),
    }


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
        if self.cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # data.task: internal labels -> the task's classes (``lv``: MYO, RV -> background), applied to every batch
        self.num_classes = task_num_classes(self.cfg.data.task)
        self.class_names = task_class_names(self.cfg.data.task)
        self.register_buffer("task_lut", torch.from_numpy(task_lut(self.cfg.data.task)).long(), persistent=False)
        self.n_outputs = count_outputs(self.model, self.cfg.model.deep_supervision)
        self.loss = DeepSupervisionLoss(DiceCELoss(), self.n_outputs)
        self.total_steps = max(1, total_steps)
        self.lr = lr if lr is not None else self.cfg.optim.lr
        self._val_stats: Tensor | None = None
        self.record: dict | None = None  # model_record, set by describe(); saved in every checkpoint
        if self.cfg.semi.method:  # its EMA teacher (if any) is part of the checkpoint
            from ..semi import build_semi

            if self.cfg.finetune.strategy == "multitask":
                raise ConfigError("strategy multitask cannot be combined with a semi-supervised method yet; "
                                  "use all, frozen-encoder or warmup-frozen")
            self.semi = build_semi(self.cfg.semi.method, self.model, self.cfg.semi.options)
        if self.cfg.finetune.strategy == "multitask":  # SSL+MultiTask: the position run's pretext head trains too
            from .transfer import multitask_pretext

            self.pretext = multitask_pretext(self.cfg.finetune, self.model)

    def forward(self, x: Tensor):
        return self.model(x)

    def describe(self, record: dict) -> None:
        """Set the ``model_record`` every checkpoint of this module carries (``checkpoint["cardiossp"]``)."""
        self.record = record

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.record is not None:
            checkpoint[RECORD_KEY] = self.record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.record is None and isinstance(checkpoint.get(RECORD_KEY), dict):
            self.record = checkpoint[RECORD_KEY]

    def progress(self) -> float:
        return min(1.0, self.global_step / self.total_steps)

    def _semi_terms(self, batch: dict) -> dict:
        from ..semi import Step, step_generator

        lab, unl = batch["labeled"], batch["unlabeled"]
        gen = step_generator(self.cfg.seed + 7919 * self.global_rank, self.global_step, lab["image"].device)
        step = Step(progress=self.progress(), global_step=self.global_step, generator=gen)
        return self.semi.training_terms(self.model, self.loss.terms, lab, unl, step)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if hasattr(self, "semi"):
            self.semi.on_train_batch_end(self.model, self.global_step)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if hasattr(self, "semi"):
            terms = self._semi_terms(batch)
            batch = batch["labeled"]
        elif hasattr(self, "pretext"):  # SSL+MultiTask (Bai et al. 2019): + pretext_weight * pretext loss
            from .transfer import multitask_terms

            terms = multitask_terms(self.model, self.pretext, self.loss, batch, self.cfg.finetune.pretext_weight)
        else:
            terms = self.loss.terms(self.model(batch["image"]), batch["segmentation"])
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step}; "
                f"subjects in the batch: {sorted(set(batch.get('subject', [])))}"
            )
        bs = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log_dict({f"train_{k}": v.float() for k, v in terms.items() if k != "loss"}, on_step=False,
                      on_epoch=True, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Map the internal labels of ``batch['segmentation']`` (one tensor or one per deep-supervision scale)
        to the task's classes; nearest-neighbour downsampled targets commute with this per-pixel lookup."""
        if isinstance(batch, dict) and "labeled" in batch:  # semi-supervised: only the labeled part has labels
            batch["labeled"] = self.on_after_batch_transfer(batch["labeled"], dataloader_idx)
            if "segmentation" in batch["unlabeled"]:  # pseudo-labels (self-training): treated as labeled
                batch["unlabeled"] = self.on_after_batch_transfer(batch["unlabeled"], dataloader_idx)
            elif "aug_params" in batch["unlabeled"]:  # the weak view: geometry only
                u = batch["unlabeled"]
                u["image"], _ = apply_batch(spatial_only(u.pop("aug_params")), u["image"], None, self._patch())
            return batch
        if isinstance(batch, dict) and "aug_params" in batch:  # device-side augmentation (data.augment_on)
            scales = deep_supervision_scales(self.model) if self.cfg.model.deep_supervision else None
            batch["image"], batch["segmentation"] = apply_batch(batch.pop("aug_params"), batch["image"],
                                                                batch["segmentation"], self._patch(), scales)
        if isinstance(batch, dict) and self.cfg.channels_last and isinstance(batch.get("image"), Tensor):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        seg = batch.get("segmentation") if isinstance(batch, dict) else None
        if seg is not None and self.cfg.data.task != "cardiac":
            lut = self.task_lut.to(seg[0].device if isinstance(seg, (list, tuple)) else seg.device)
            batch["segmentation"] = [lut[t] for t in seg] if isinstance(seg, (list, tuple)) else lut[seg]
        return batch

    def _patch(self) -> tuple[int, int]:
        return (self.cfg.data.patch_size,) * 2

    def on_validation_epoch_start(self) -> None:
        self._val_stats = torch.zeros(3, self.num_classes - 1, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["image"])
        logits = out[0] if isinstance(out, (list, tuple)) else out
        target = batch["segmentation"]
        target = (target[0] if isinstance(target, (list, tuple)) else target)[:, 0]
        pred = logits.argmax(1)
        valid = batch.get("valid")  # 0 for the padding a DDP rank repeats (ShardedEvalSampler)
        keep = torch.ones_like(pred, dtype=torch.bool) if valid is None else valid.bool()[:, None, None].expand_as(pred)
        for c in range(1, self.num_classes):
            p, t = (pred == c) & keep, (target == c) & keep
            self._val_stats[0, c - 1] += (p & t).sum()
            self._val_stats[1, c - 1] += (p & ~t).sum()
            self._val_stats[2, c - 1] += (~p & t).sum()

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if self.trainer.world_size > 1:
            stats = self.all_gather(stats).sum(0)
        tp, fp, fn = stats
        dice = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).float()
        for c in range(1, self.num_classes):
            self.log(f"val_dice_{self.class_names[c]}", dice[c - 1], sync_dist=False)
        self.log("val_dice", dice.mean(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for n, p in self.named_parameters() if not n.startswith("semi.")]  # not the EMA teacher
        opt = torch.optim.SGD(params, lr=self.lr, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_lr(s, self.total_steps, o.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

