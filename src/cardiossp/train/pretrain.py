"""Lightning module and run function for self-supervised pretraining.

The engine owns the loop (optimiser, schedule, AMP, clipping, checkpoints, DDP); the
method (``cardiossp.ssp``) owns its views, loss and hooks; what the engine
needs to know about a method it reads from the method's class (``find_unused_parameters``,
``schedule_options``, ``extra_record``), never from its name. Optimiser: SGD with linear
warm-up then cosine decay per step (de Mooij et al. 2024, Appendix A), ``schedules.warmup_cosine`` of the same
``schedules.progress`` every method schedule uses. Steps per epoch come from the trainer's
world size (``engine.steps_per_epoch``), so the schedule spans the run on any number of
processes and nodes. At the end the run writes
``RUN/pretrained.pt``: the method's transferable state in the segmentation model's key
namespace, with the model config and method name (loaded with ``weights_only=True``), and its
SHA-256 in ``RUN/pretrained.pt.sha256`` (checked by every load, ``models.weights``). Every session
appends to ``RUN/train.log`` (``run.TrainLog``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from ..config import PretrainConfig, from_dict, to_dict
from ..data.batch_augment import apply_batch, device_augmentation
from ..data.budgets import pretraining_subjects
from ..data.datasets import UnlabeledSlices
from ..data.labels import NUM_CLASSES
from ..data.slices import SliceCache
from ..data.splits import load_split
from ..models import build_from_config
from ..models.weights import save_weights
from ..ssp import SSP_METHODS, build_method, schedules
from .run import RunSkeleton, seeded_loader

log = logging.getLogger("cardiossp.train")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at optimizer step ``step`` of ``total``: linear 0 -> 1 over the first
    ``warmup`` steps, then cosine 1 -> 0 at ``total`` (``schedules.warmup_cosine`` of
    ``schedules.progress(step, total)``)."""
    total = max(1, total)
    return schedules.warmup_cosine(schedules.progress(step, total), base=1.0, final=0.0,
                                   warmup_fraction=min(1.0, max(0, warmup) / total))


class PretrainModule(L.LightningModule):
    def __init__(self, cfg: PretrainConfig | dict, total_steps: int = 1, steps_per_epoch: int = 1):
        super().__init__()
        cfg_dict = cfg if isinstance(cfg, dict) else to_dict(cfg)
        self.save_hyperparameters({"cfg": cfg_dict, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch})
        self.cfg = from_dict(PretrainConfig, cfg_dict, "pretrain") if isinstance(cfg, dict) else cfg
        m = self.cfg.model

        def backbone(num_classes: int, deep_supervision: bool):  # any registered model (+ model.encoder_weights)
            return build_from_config(m, num_classes, deep_supervision)

        d = self.cfg.data
        on_cuda = self.cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        options = {"input_size": d.input_size, "augment": d.augment,
                   "augment_on_device": device_augmentation(d.augment_on, d.augment, on_cuda),
                   **SSP_METHODS.get(self.cfg.method).schedule_options(self.cfg.schedule.epochs),
                   **self.cfg.method_options}  # the user's options win
        self.method = build_method(self.cfg.method, backbone, options)
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)

    def progress(self) -> float:
        return schedules.progress(self.global_step, self.total_steps)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Device-side views (``data.augment_on``): every deferred view ``{"image", "aug_params", "patch"}``
        of the batch becomes its augmented (B, 1, h, w) tensor here, on the training device."""
        for key, view in list(batch.items()) if isinstance(batch, dict) else []:
            if isinstance(view, dict) and "aug_params" in view:
                patch = tuple(int(v) for v in view["patch"][0])
                batch[key] = apply_batch(view["aug_params"], view["image"], None, patch)[0]
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.method.forward_loss(batch, self.progress())
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss {loss.item()} at step {self.global_step}; "
                                     f"subjects in the batch: {sorted(set(batch.get('subject', [])))[:10]}")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=_batch_size(batch))
        self.log_dict({f"train_{k}": float(v) for k, v in out.items() if k != "loss"}, on_step=False, on_epoch=True,
                      batch_size=_batch_size(batch))
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True,
                 batch_size=_batch_size(batch))
        return loss

    def on_after_backward(self) -> None:
        self.method.on_after_backward(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.method.on_train_batch_end(self.progress())

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.method.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                              weight_decay=o.weight_decay)
        warm = o.warmup_epochs * self.steps_per_epoch
        total = self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def pretrained_record(self) -> dict:
        record = {"format": "cardiossp-pretrained-1", "method": self.cfg.method, "transfers": self.method.transfers,
                  "model": to_dict(self.cfg.model), "num_classes": NUM_CLASSES,
                  "state_dict": {k: v.detach().cpu() for k, v in self.method.transferable_state().items()}}
        extra = self.method.extra_record()  # e.g. position: its pretext head, for SSL+MultiTask fine-tuning
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"{self.cfg.method}.extra_record() would overwrite {clash}")
        return {**record, **extra}


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1


def pretrain(cfg: PretrainConfig, cache: str | Path, out: str | Path, split: str | Path | None = None,
             resume: bool = False, progress: bool = True, loggers: tuple[str, ...] = ()) -> Path:
    """Pretrain on every frame of the split's training + unlabeled subjects (all short-axis cache subjects
    when no split is given; long-axis ones too for methods with ``all_views``); labels are never read."""
    sc = SliceCache(cache)
    all_views = SSP_METHODS.get(cfg.method).all_views
    if split is not None:
        sp = load_split(split)
        subjects = pretraining_subjects(sp) + (sorted(sp["other_views"]) if all_views else [])
    else:
        views = sc.subjects["view"].fillna("SA") if "view" in sc.subjects else None
        sa_only = views is not None and not all_views
        subjects = sc.subjects["subject"][views == "SA"].tolist() if sa_only else sc.subject_ids()
    d = cfg.data
    method_cls = SSP_METHODS.get(cfg.method)
    # Build once to get the view maker (workers receive only it, not the network); seeded, since its
    # weights are the run's starting weights (copied into the module below).
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    probe = PretrainModule(cfg)
    dataset = UnlabeledSlices(sc, subjects, transform=probe.method.view_maker)
    with RunSkeleton(out, resume, "pretrained.pt", cfg, progress=progress, loggers=loggers,
                     find_unused_parameters=method_cls.find_unused_parameters) as run:
        sampler, batch, per_epoch = run.sampling(len(dataset))
        module = PretrainModule(cfg, total_steps=per_epoch * run.epochs, steps_per_epoch=per_epoch)
        module.method.load_state_dict(probe.method.state_dict())
        run.save_config(cache=str(Path(cache).resolve()), split=str(Path(split).resolve()) if split else None,
                        pretrain_subjects=len(subjects), pretrain_slices=len(dataset))
        run.fit(module, seeded_loader(dataset, batch, d.num_workers, sampler))
        if run.finished:
            digest = save_weights(module.pretrained_record(), run.out / "pretrained.pt")  # + pretrained.pt.sha256
            log.info(f"wrote {run.out / 'pretrained.pt'} (sha256 {digest})")
            run.write_done(slices_per_second=run.trainer.global_step * d.batch_size / max(run.seconds, 1e-9))
    return run.out
