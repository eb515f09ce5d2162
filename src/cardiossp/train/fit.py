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
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from ..config import TrainConfig, save_run_config
from ..data.augment import build_transforms, spatial_transforms, val_transforms
from ..data.datasets import LabeledSlices, UnlabeledSlices
from ..data.slices import SliceCache
from ..data.splits import load_split, training_subjects
from ..errors import ConfigError
from ..models import deep_supervision_scales
from ..semi import SEMI_METHODS
from .engine import build_trainer, kept_metrics, rank_batch, resume_point, steps_per_epoch
from .sampling import PaddedEval, SeededItems, SeededSampler, ShardedEvalSampler, worker_threads
from .segmentation import SegmentationModule


def _loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last=None) -> DataLoader:
    drop = isinstance(sampler, SeededSampler) if drop_last is None else drop_last
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      worker_init_fn=worker_threads if num_workers else None, drop_last=drop,
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
    """Train (or fine-tune, with ``cfg.finetune.init``) on the split's training subjects; returns ``out``.
    With ``cfg.semi.method`` every step also draws a batch of unlabeled slices (``unlabeled_pool``)."""
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
    if s.epoch_mode not in ("iterations", "pass"):
        raise ConfigError(f"schedule.epoch_mode must be 'iterations' or 'pass', got {s.epoch_mode!r}")
    semi = SEMI_METHODS.get(cfg.semi.method) if cfg.semi.method else None
    trainer = build_trainer(out, s.epochs, cfg.precision, cfg.accelerator, cfg.devices, num_nodes=cfg.num_nodes,
                            grad_clip=cfg.optim.grad_clip, val_every=s.val_every, loggers=loggers,
                            progress=progress, monitor="val_dice" if val_ds else None,
                            find_unused_parameters=bool(semi and semi.find_unused_parameters),
                            callbacks=_finetune_callbacks(cfg) + list(callbacks or []))
    batch = rank_batch(d.batch_size, trainer.world_size, "data.batch_size")
    n_items = s.iters_per_epoch * d.batch_size if s.epoch_mode == "iterations" else None
    sampler = SeededSampler(len(train_ds), cfg.seed, num_samples=n_items)
    steps = steps_per_epoch(trainer, n_items or len(train_ds), batch)
    lr = cfg.finetune.lr if cfg.finetune.init else cfg.optim.lr
    module = SegmentationModule(cfg, total_steps=steps * s.epochs, lr=lr)
    if cfg.finetune.init and not resume:
        from .transfer import apply_finetune_init

        apply_finetune_init(module, cfg.finetune)
    train_loader = _loader(SeededItems(train_ds), batch, d.num_workers, sampler=sampler)
    extra = {}
    if semi is not None:
        pool = unlabeled_pool(sp, train_ids, cfg.subset)
        unl_ds = UnlabeledSlices(sc, pool, transform=spatial_transforms(d.augment, (d.patch_size,) * 2))
        bu = rank_batch(cfg.semi.unlabeled_batch_size or d.batch_size, trainer.world_size, "semi.unlabeled_batch_size")
        unl_sampler = SeededSampler(len(unl_ds), cfg.seed + 1, num_samples=steps * bu * trainer.world_size)
        unl_loader = _loader(SeededItems(unl_ds), bu, d.num_workers, sampler=unl_sampler)
        train_loader = CombinedLoader({"labeled": train_loader, "unlabeled": unl_loader}, mode="min_size")
        extra = {"semi": cfg.semi.method, "unlabeled_subjects": len(pool), "unlabeled_slices": len(unl_ds)}
    if trainer.is_global_zero:
        save_run_config(cfg, out, cache=str(Path(cache).resolve()), split=str(Path(split).resolve()),
                        train_subjects=train_ids, train_slices=len(train_ds), **extra)
    val_loader = None
    if val_ds is not None:
        val_loader = _loader(PaddedEval(val_ds), batch, d.num_workers, sampler=ShardedEvalSampler(len(val_ds)))
    t0 = time.time()
    with kept_metrics(out, resume, enabled=trainer.is_global_zero):
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    if trainer.is_global_zero and trainer.current_epoch >= s.epochs:  # not when stopped early
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        done = {"seconds": time.time() - t0, "epochs": s.epochs, "steps": trainer.global_step,
                "train_subjects": len(train_ids), "metrics": metrics, **extra}
        tmp = out / "done.json.tmp"
        tmp.write_text(json.dumps(done, indent=2))
        tmp.replace(out / "done.json")
    return out


def unlabeled_pool(split: dict, labeled: list[str], subset: str | None = None) -> list[str]:
    """Subjects whose slices semi-supervised training may use without labels: the split's training
    subjects outside the label budget (within ``subset`` if one is named) plus its unlabeled
    subjects; never val or test."""
    train = split["subsets"][subset] if subset else split["train"]
    pool = sorted((set(train) - set(labeled)) | set(split.get("unlabeled", [])))
    if not pool:
        raise ConfigError("semi-supervised training needs unlabeled subjects, but the label budget takes every "
                          "training subject and the split lists no unlabeled ones")
    return pool


def _finetune_callbacks(cfg: TrainConfig) -> list:
    if not cfg.finetune.init or cfg.finetune.strategy == "all":
        return []
    from .transfer import FreezeEncoder

    return [FreezeEncoder(cfg.finetune)]
