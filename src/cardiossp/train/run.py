"""The one run skeleton shared by pretraining (``train.pretrain``) and (semi-)supervised training
(``train.fit``): resume point, seeding, the Trainer, per-process batch and seeded sampler, steps per
epoch, the run config, the fit with kept metrics, and the finished marker.

A run function reads as::

    run = RunSkeleton(out, resume, "done.json", cfg, monitor="val_dice", ...)
    sampler, batch, per_epoch = run.sampling(len(dataset))
    module = make_module(total_steps=per_epoch * run.epochs)
    run.save_config(cache=..., train_slices=...)
    run.fit(module, run.loader(dataset, batch, sampler), val_loader)
    if run.finished:
        run.write_done(...)

Global-batch policy (as nnU-Net's DDP): ``data.batch_size`` is the global batch; each of the
trainer's ``world_size`` processes takes ``batch_size / world_size`` slices a step, so the number of
steps, the schedules and the learning rate are those of the 1-process run (``engine.rank_batch``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from ..atomic import write_json
from ..config import save_run_config
from .engine import build_trainer, kept_metrics, rank_batch, resume_point, steps_per_epoch
from .sampling import SeededItems, SeededSampler, worker_threads


def seeded_loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool | None = None):
    """A DataLoader over ``dataset`` (wrapped in ``SeededItems`` for a ``SeededSampler``): one
    thread per worker, whole batches only when sampling."""
    seeded = isinstance(sampler, SeededSampler)
    return DataLoader(SeededItems(dataset) if seeded else dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, worker_init_fn=worker_threads if num_workers else None,
                      drop_last=seeded if drop_last is None else drop_last, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


class ElapsedTime(Callback):
    """Training seconds summed over every session of a run (``logs/elapsed.json``, rewritten at the end
    of each epoch by rank 0): a resumed run's ``done.json`` reports the whole run, not its last part
    (the part of an epoch that was interrupted is not counted)."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / "logs" / "elapsed.json"
        self.before = 0.0
        if resume and self.path.is_file():
            self.before = float(json.loads(self.path.read_text()).get("seconds", 0.0))
        self.t0 = time.time()

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return self.before + time.time() - self.t0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.path, {"seconds": self.seconds, "epoch": trainer.current_epoch + 1})


class RunSkeleton:
    """One run folder's life; ``cfg`` is a TrainConfig or PretrainConfig (same common fields)."""

    def __init__(self, out: str | Path, resume: bool, finished_marker: str, cfg, monitor: str | None = None,
                 progress: bool = True, loggers: tuple[str, ...] = (), callbacks: list | None = None,
                 find_unused_parameters: bool = False):
        self.out = Path(out)
        self.resume = resume
        self.ckpt_path = resume_point(self.out, resume, finished_marker)
        self.cfg = cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.elapsed = ElapsedTime(self.out, resume)
        s = cfg.schedule
        self.epochs = s.epochs
        self.trainer = build_trainer(self.out, s.epochs, cfg.precision, cfg.accelerator, cfg.devices,
                                     num_nodes=int(cfg.num_nodes), monitor=monitor, grad_clip=cfg.optim.grad_clip,
                                     val_every=s.val_every, loggers=loggers, progress=progress,
                                     callbacks=[self.elapsed, *(callbacks or [])],
                                     find_unused_parameters=find_unused_parameters)
        self.seconds = 0.0

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size)

    @property
    def is_global_zero(self) -> bool:
        return bool(self.trainer.is_global_zero)

    def rank_batch(self, global_batch: int, key: str = "data.batch_size") -> int:
        return rank_batch(global_batch, self.world_size, key)

    def sampling(self, n_items: int, global_batch: int | None = None, seed: int | None = None,
                 key: str = "data.batch_size") -> tuple[SeededSampler, int, int]:
        """(sampler, per-process batch, steps per epoch) for a dataset of ``n_items``: an epoch is
        ``iters_per_epoch`` global batches (``epoch_mode: iterations``) or one pass (``pass``)."""
        s = self.cfg.schedule
        if s.epoch_mode not in ("iterations", "pass"):
            from ..errors import ConfigError

            raise ConfigError(f"schedule.epoch_mode must be 'iterations' or 'pass', got {s.epoch_mode!r}")
        global_batch = global_batch or self.cfg.data.batch_size
        batch = self.rank_batch(global_batch, key)
        n = s.iters_per_epoch * global_batch if s.epoch_mode == "iterations" else None
        sampler = SeededSampler(n_items, self.cfg.seed if seed is None else seed, num_samples=n)
        return sampler, batch, steps_per_epoch(self.trainer, n or n_items, batch)

    def save_config(self, **facts) -> None:
        if self.is_global_zero:
            save_run_config(self.cfg, self.out, world_size=self.world_size, **facts)

    def fit(self, module: L.LightningModule, train_loader, val_loader=None) -> None:
        with kept_metrics(self.out, self.resume, enabled=self.is_global_zero):
            self.trainer.fit(module, train_loader, val_loader, ckpt_path=self.ckpt_path)
        self.seconds = self.elapsed.seconds  # every session of the run, resumes included

    @property
    def finished(self) -> bool:
        """Rank 0 of a run that reached its last epoch (not one stopped early)."""
        return self.is_global_zero and self.trainer.current_epoch >= self.epochs

    def write_done(self, **facts) -> dict:
        done = {"seconds": self.seconds, "epochs": self.epochs, "steps": self.trainer.global_step,
                "world_size": self.world_size, **facts}
        write_json(self.out / "done.json", done)
        return done
