"""``train_segmentation``: the supervised training run (from scratch or from a pretrained start).

Run folder::

    RUN/config.yaml              resolved config, git SHA, cache, split, training subjects
    RUN/checkpoints/last.ckpt    every epoch (resume from here)
    RUN/checkpoints/best.ckpt    best validation pseudo-Dice
    RUN/logs/metrics.csv         every logged metric
    RUN/done.json                written last: the run finished
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig, save_run_config
from ..data.augment import build_transforms, val_transforms
from ..data.datasets import LabeledSlices
from ..data.slices import SliceCache
from ..data.splits import load_split, training_subjects
from ..errors import ConfigError
from ..models import deep_supervision_scales
from .engine import build_trainer, kept_metrics, resume_point
from .sampling import SeededItems, SeededSampler, worker_threads
from .segmentation import SegmentationModule


def _loader(dataset, batch_size: int, num_workers: int, sampler=None, shuffle=False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=num_workers,
                      worker_init_fn=worker_threads if num_workers else None, drop_last=sampler is not None,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def train_segmentation(
    cfg: TrainConfig,
    cache: str | Path,
    split: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    loggers: tuple[str, ...] = (),
    callbacks: list | None = None,
) -> Path:
    """Train (or fine-tune, with ``cfg.finetune.init``) on the split's training subjects; returns ``out``."""
    out = Path(out)
    ckpt_path = resume_point(out, resume, "done.json")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    sc = SliceCache(cache)
    sp = load_split(split)
    train_ids = training_subjects(sp, cfg.labeled_subjects, cfg.subset)
    d = cfg.data
    probe = SegmentationModule(cfg, total_steps=1).model
    ds_scales = deep_supervision_scales(probe) if cfg.model.deep_supervision else None
    train_ds = LabeledSlices(sc, train_ids, d.phases, build_transforms(d.augment, (d.patch_size,) * 2, ds_scales))
    val_ds = LabeledSlices(sc, sp["val"], ("ED", "ES"), val_transforms((sc.size,) * 2)) if sp["val"] else None
    s = cfg.schedule
    if s.epoch_mode == "iterations":
        sampler = SeededSampler(len(train_ds), cfg.seed, num_samples=s.iters_per_epoch * d.batch_size)
    elif s.epoch_mode == "pass":
        sampler = SeededSampler(len(train_ds), cfg.seed)
    else:
        raise ConfigError(f"schedule.epoch_mode must be 'iterations' or 'pass', got {s.epoch_mode!r}")
    world = 1 if cfg.devices in ("auto", 1, "1") else int(cfg.devices)
    steps_per_epoch = max(1, len(sampler) // (d.batch_size * world) if world > 1 else len(sampler) // d.batch_size)
    lr = cfg.finetune.lr if cfg.finetune.init else cfg.optim.lr
    module = SegmentationModule(cfg, total_steps=steps_per_epoch * s.epochs, lr=lr)
    if cfg.finetune.init and not resume:
        from .transfer import apply_finetune_init

        apply_finetune_init(module, cfg.finetune)
    save_run_config(cfg, out, cache=str(Path(cache).resolve()), split=str(Path(split).resolve()),
                    train_subjects=train_ids, train_slices=len(train_ds))
    trainer = build_trainer(out, s.epochs, cfg.precision, cfg.accelerator, cfg.devices,
                            grad_clip=cfg.optim.grad_clip, val_every=s.val_every, loggers=loggers,
                            progress=progress, monitor="val_dice" if val_ds else None,
                            callbacks=_finetune_callbacks(cfg) + list(callbacks or []))
    t0 = time.time()
    with kept_metrics(out, resume):
        trainer.fit(module, _loader(SeededItems(train_ds), d.batch_size, d.num_workers, sampler=sampler),
                    _loader(val_ds, d.batch_size, d.num_workers) if val_ds else None,
                    ckpt_path=ckpt_path)
    if trainer.global_rank == 0 and trainer.current_epoch >= s.epochs:  # not when stopped early
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        done = {"seconds": time.time() - t0, "epochs": s.epochs, "steps": trainer.global_step,
                "train_subjects": len(train_ids), "metrics": metrics}
        tmp = out / "done.json.tmp"
        tmp.write_text(json.dumps(done, indent=2))
        tmp.replace(out / "done.json")
    return out


def _finetune_callbacks(cfg: TrainConfig) -> list:
    if not cfg.finetune.init or cfg.finetune.strategy == "all":
        return []
    from .transfer import FreezeEncoder

    return [FreezeEncoder(cfg.finetune)]
