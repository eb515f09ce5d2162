"""``train_segmentation``: the supervised training run (from scratch or from a pretrained start).

Run folder::

    RUN/config.yaml              resolved config, git SHA, cache, split, training subjects
    RUN/checkpoints/last.ckpt    every epoch (resume from here)
    RUN/checkpoints/best.ckpt    best validation pseudo-Dice
    RUN/logs/metrics.csv         every logged metric
    RUN/train.log                what each session did and said (appended on resume; ``run.TrainLog``)
    RUN/done.json                written last: the run finished

Both checkpoints describe their model (``segmentation.model_record``: input grid, normalisation, labels,
task, model config, version, git SHA), so ``Segmenter.from_checkpoint`` needs neither this folder's
config.yaml nor the training cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import CombinedLoader

from ..config import TrainConfig
from ..data.augment import build_transforms, spatial_transforms, val_transforms
from ..data.batch_augment import SeededParams, device_augmentation
from ..data.budgets import training_subjects
from ..data.datasets import LabeledSlices, PseudoLabeledSlices, UnlabeledSlices
from ..data.pseudo import PseudoLabels
from ..data.slices import SliceCache
from ..data.splits import load_split
from ..errors import ConfigError
from ..models import deep_supervision_scales
from ..semi import SEMI_METHODS
from .run import RunSkeleton, seeded_loader
from .sampling import PaddedEval, SeededSampler, ShardedEvalSampler
from .segmentation import SegmentationModule, model_record


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
    With ``cfg.semi.method`` every step also draws a batch of unlabeled slices (``unlabeled_pool``); for
    self-training, the pool's slices with the pseudo-labels of ``cfg.semi.pseudo_labels``."""
    sc = SliceCache(cache)
    sp = load_split(split)
    train_ids = training_subjects(sp, cfg.labeled_subjects, cfg.subset)
    d = cfg.data
    probe = SegmentationModule(cfg, total_steps=1).model
    ds_scales = deep_supervision_scales(probe) if cfg.model.deep_supervision else None
    on_device = device_augmentation(d.augment_on, d.augment, cfg.accelerator in ("auto", "gpu", "cuda")
                                    and torch.cuda.is_available())
    patch = (d.patch_size,) * 2
    train_tf = SeededParams(d.augment, patch) if on_device else build_transforms(d.augment, patch, ds_scales)
    train_ds = LabeledSlices(sc, train_ids, d.phases, train_tf)
    val_ds = LabeledSlices(sc, sp["val"], ("ED", "ES"), val_transforms((sc.size,) * 2)) if sp["val"] else None
    semi = SEMI_METHODS.get(cfg.semi.method) if cfg.semi.method else None
    with RunSkeleton(out, resume, "done.json", cfg, monitor="val_dice" if val_ds else None, progress=progress,
                     loggers=loggers, callbacks=_finetune_callbacks(cfg) + list(callbacks or []),
                     find_unused_parameters=bool(semi and semi.find_unused_parameters)) as run:
        sampler, batch, per_epoch = run.sampling(len(train_ds))
        module = SegmentationModule(cfg, total_steps=per_epoch * run.epochs, lr=start_lr(cfg))
        module.describe(model_record(cfg, sc.spacing, sc.size))  # in every checkpoint: the model works anywhere
        if cfg.finetune.init and not resume:
            from .transfer import apply_finetune_init

            apply_finetune_init(module, cfg.finetune)
        train_loader = seeded_loader(train_ds, batch, d.num_workers, sampler)
        facts = {}
        if semi is not None:
            pool = unlabeled_pool(sp, train_ids, cfg.subset)
            if semi.uses_pseudo_labels:  # self-training: the pool's slices, a teacher's labels, labeled augmentation
                pseudo = PseudoLabels(cfg.semi.pseudo_labels, sc)
                pseudo.require(pool)
                frames = semi.pool_frames(pseudo, pool, cfg.semi.options)
                unl_ds = PseudoLabeledSlices(sc, pseudo, pool, train_tf, frames)
            else:
                unl_ds = UnlabeledSlices(sc, pool, transform=SeededParams(d.augment, patch) if on_device
                                         else spatial_transforms(d.augment, patch))
            bu = run.rank_batch(cfg.semi.unlabeled_batch_size or d.batch_size, "semi.unlabeled_batch_size")
            unl_sampler = SeededSampler(len(unl_ds), cfg.seed + 1, num_samples=per_epoch * bu * run.world_size)
            unl_loader = seeded_loader(unl_ds, bu, d.num_workers, unl_sampler)
            train_loader = CombinedLoader({"labeled": train_loader, "unlabeled": unl_loader}, mode="min_size")
            facts = {"semi": cfg.semi.method, "unlabeled_subjects": len(pool), "unlabeled_slices": len(unl_ds)}
            if semi.uses_pseudo_labels:
                facts["pseudo_labels"] = {k: pseudo.record[k] for k in ("teacher", "teacher_sha256", "tta",
                                                                        "largest_component")}
                facts["pseudo_labels"]["clean_up"] = pseudo.record.get("clean_up")  # None: a store older than the key
                facts["pseudo_labels"]["frames"] = "all" if frames is None else len(frames)
        run.save_config(cache=str(Path(cache).resolve()), split=str(Path(split).resolve()), train_subjects=train_ids,
                        train_slices=len(train_ds), **facts)
        val_loader = None
        if val_ds is not None:  # each rank validates its share; the module reduces the counts once
            val_loader = seeded_loader(PaddedEval(val_ds), batch, d.num_workers, ShardedEvalSampler(len(val_ds)))
        run.fit(module, train_loader, val_loader)
        if run.finished:
            metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items() if v.numel() == 1}
            run.write_done(train_subjects=len(train_ids), metrics=metrics, **facts)
    return run.out


def start_lr(cfg: TrainConfig) -> float:
    """The peak lr of a run: ``finetune.lr`` when it starts from pretraining, ``optim.lr`` from scratch."""
    return cfg.finetune.lr if cfg.finetune.init else cfg.optim.lr


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
