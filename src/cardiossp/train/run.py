"""The one run skeleton shared by pretraining (``train.pretrain``) and (semi-)supervised training
(``train.fit``): resume point, seeding, the Trainer, per-process batch and seeded sampler, steps per
epoch, the run config, the fit with kept metrics, and the finished marker.

A run function reads as::

    with RunSkeleton(out, resume, "done.json", cfg, monitor="val_dice", ...) as run:
        sampler, batch, per_epoch = run.sampling(len(dataset))
        module = make_module(total_steps=per_epoch * run.epochs)
        run.save_config(cache=..., train_slices=...)
        run.fit(module, run.loader(dataset, batch, sampler), val_loader)
        if run.finished:
            run.write_done(...)

``RUN/train.log`` (``TrainLog``, rank 0, appended to by every session of the run): everything the
``cardiossp`` logger says while the run is open (e.g. what a fine-tuning start transferred), the start
facts of each session (version and git SHA, config summary, devices, precision, resume point), the
progress lines and one line per epoch (``engine.LineProgress`` / ``EpochLine``), and the end: the
``done.json`` facts with the final metrics, or why the session stopped. ``done.json`` names the precision
and the machine of the session that finished the run (``machine.machine_facts``: CPU with family / model,
threads, GPUs), so a wall time never travels without its hardware.

Global-batch policy (as nnU-Net's DDP): ``data.batch_size`` is the global batch; each of the
trainer's ``world_size`` processes takes ``batch_size / world_size`` slices a step, so the number of
steps, the schedules and the learning rate are those of the 1-process run (``engine.rank_batch``).

Resume is safe: ``checkpoints/last.ckpt`` is read with ``weights_only=True`` passed explicitly (by us
and by Lightning's ``trainer.fit(weights_only=True)``), so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot
make it unpickle arbitrary objects; before training starts it is opened once (memory-mapped, no
tensor data read) to check it is a readable checkpoint of this kind of run whose tensors fit the
model, else one CheckpointError naming the file.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from ..atomic import write_json
from ..config import save_run_config
from ..errors import CheckpointError
from ..machine import machine_facts, machine_summary
from ..models.weights import load_torch_file
from .engine import build_trainer, kept_metrics, rank_batch, resume_point, steps_per_epoch
from .sampling import SeededItems, SeededSampler, worker_threads

log = logging.getLogger("cardiossp.train")
SUMMARY_KEYS = ("method", "model.name", "model.n_stages", "model.base_features", "model.max_features", "data.task",
                "data.batch_size", "data.patch_size", "data.input_size", "schedule.epochs",
                "schedule.iters_per_epoch", "optim.lr", "finetune.init", "finetune.strategy", "semi.method",
                "labeled_subjects", "subset", "seed", "precision")


class TrainLog:
    """A ``logging.FileHandler`` appending to ``path`` on the ``cardiossp`` logger (INFO and up) until
    ``close()``; the logger's level is lowered to INFO meanwhile if it was higher (then restored)."""

    FORMAT = "%(asctime)s %(levelname)s %(message)s"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(self.FORMAT, "%Y-%m-%d %H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("cardiossp")
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def close(self) -> None:
        if self.handler in self.logger.handlers:
            self.logger.removeHandler(self.handler)
            self.logger.setLevel(self._level)
        self.handler.close()


def config_summary(cfg) -> str:
    """``key=value`` of the config fields that say most about a run (``SUMMARY_KEYS``, unset ones left out)."""
    from ..config import to_dict

    flat, stack = {}, [("", to_dict(cfg))]
    while stack:
        prefix, d = stack.pop()
        for k, v in d.items():
            if isinstance(v, dict):
                stack.append((f"{prefix}{k}.", v))
            else:
                flat[prefix + k] = v
    return " ".join(f"{k}={flat[k]}" for k in SUMMARY_KEYS if flat.get(k) not in (None, ""))


def _facts(facts: dict) -> str:
    """``k v, ...`` with lists shown by their length."""
    def show(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return f"{len(v)} items" if isinstance(v, (list, tuple)) and len(v) > 6 else v

    return ", ".join(f"{k} {show(v)}" for k, v in facts.items() if k != "metrics")


def _metrics(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items()))


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


def check_resume_point(ckpt: str | Path, cfg) -> dict[str, torch.Size]:
    """Open the resume checkpoint with ``weights_only=True`` (memory-mapped) and check it is a Lightning
    checkpoint of the same kind of run as ``cfg`` (pretraining or segmentation); returns the shapes of
    its ``state_dict`` (compared with the module in ``RunSkeleton.fit``)."""
    from ..checkpoints import checkpoint_kind
    from ..config import PretrainConfig

    obj = load_torch_file(ckpt, "resume checkpoint", mmap=True)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not isinstance(obj.get("loops"), dict):
        raise CheckpointError(f"{ckpt}: not a Lightning checkpoint of a cardiossp run (no state_dict / loops); "
                              "remove it to start the run afresh")
    kind, _ = checkpoint_kind(obj)
    want = "pretraining" if isinstance(cfg, PretrainConfig) else "segmentation"
    if kind is not None and kind != want:
        raise CheckpointError(f"{ckpt}: a checkpoint of a {kind} run; this {want} run cannot resume from it")
    return {k: torch.Size(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_resume_fits(ckpt: str | Path, shapes: dict[str, torch.Size], module: L.LightningModule) -> None:
    """Every tensor of ``module`` must be in the checkpoint with its shape (Lightning restores strictly;
    keys only the checkpoint has may belong to modules built later, in ``setup``)."""
    own = module.state_dict()
    lacking = [k for k in own if k not in shapes]
    other = [f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in shapes and shapes[k] != v.shape]
    if lacking or other:
        parts = [f"{len(items)} {what} ({', '.join(items[:4])}{' ...' if len(items) > 4 else ''})"
                 for what, items in (("keys missing", lacking), ("shape mismatches", other)) if items]
        raise CheckpointError(f"{ckpt}: does not fit this run's model (was the run's config changed?): "
                              f"{'; '.join(parts)}")


class RunSkeleton:
    """One run folder's life; ``cfg`` is a TrainConfig or PretrainConfig (same common fields)."""

    def __init__(self, out: str | Path, resume: bool, finished_marker: str, cfg, monitor: str | None = None,
                 progress: bool = True, loggers: tuple[str, ...] = (), callbacks: list | None = None,
                 find_unused_parameters: bool = False):
        from ..config import PretrainConfig
        from ..config_checks import check_config

        # configs built in Python skip load_config's checks: the same rules, before any work
        check_config(cfg, "pretrain config" if isinstance(cfg, PretrainConfig) else "train config")
        self.out = Path(out)
        self.resume = resume
        self.ckpt_path = resume_point(self.out, resume, finished_marker)
        self.cfg = cfg
        self._resume_shapes = check_resume_point(self.ckpt_path, cfg) if self.ckpt_path else None
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
        self.train_log = TrainLog(self.out / "train.log") if self.is_global_zero else None
        if self.train_log is not None:
            self._log_start()

    def __enter__(self) -> "RunSkeleton":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and self.train_log is not None:
            text = " ".join(str(error).split())
            log.error(f"session stopped by {kind.__name__}{': ' + text if text else ''}")
        self.close()
        return False

    def close(self) -> None:
        """Detach ``train.log`` (``with RunSkeleton(...)`` does it, also when the run fails)."""
        if self.train_log is not None:
            self.train_log.close()
            self.train_log = None

    def _log_start(self) -> None:
        from .. import __version__
        from ..config import git_sha

        where = f"resumed from {self.ckpt_path}" if self.ckpt_path else "fresh run"
        log.info(f"==== session start ({where}): {self.out.resolve()}")
        log.info(f"cardiossp {__version__} (git {git_sha()}), torch {torch.__version__}, lightning {L.__version__}")
        log.info(f"config: {config_summary(self.cfg)} (resolved: config.yaml)")
        c = self.cfg
        log.info(f"trainer: accelerator {c.accelerator}, devices {c.devices}, nodes {c.num_nodes}, "
                 f"world size {self.world_size}, precision {self.trainer.precision}")
        log.info(f"machine: {machine_summary()}")

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
            log.info(f"data: {_facts(facts)}")

    def fit(self, module: L.LightningModule, train_loader, val_loader=None) -> None:
        if self._resume_shapes is not None:
            check_resume_fits(self.ckpt_path, self._resume_shapes, module)
        with kept_metrics(self.out, self.resume, enabled=self.is_global_zero), warnings.catch_warnings():
            if in_eval_by_design(module):  # Lightning's "modules in eval mode" would only be about EMA teachers
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode",
                                        category=PossibleUserWarning)
            self.trainer.fit(module, train_loader, val_loader, ckpt_path=self.ckpt_path, weights_only=True)
        self.seconds = self.elapsed.seconds  # every session of the run, resumes included
        if self.is_global_zero and not self.finished:
            log.info(f"session ended at epoch {self.trainer.current_epoch}/{self.epochs}, step "
                     f"{self.trainer.global_step}, before the run finished (continue it with --resume)")

    @property
    def finished(self) -> bool:
        """Rank 0 of a run that reached its last epoch (not one stopped early)."""
        return self.is_global_zero and self.trainer.current_epoch >= self.epochs

    def write_done(self, **facts) -> dict:
        done = {"seconds": self.seconds, "epochs": self.epochs, "steps": self.trainer.global_step,
                "world_size": self.world_size, "precision": str(self.trainer.precision),
                "machine": machine_facts(), **facts}
        write_json(self.out / "done.json", done)
        final = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        log.info(f"finished: {_facts(done)}")
        log.info(f"final metrics: {_metrics(done.get('metrics') or final)}")
        return done


def in_eval_by_design(module: torch.nn.Module) -> bool:
    """Every submodule of ``module`` in eval mode lies inside one that stays in eval mode by design
    (``stays_in_eval = True``: the EMA teachers of ``semi.base``), and there is at least one."""
    owners = [name for name, m in module.named_modules() if getattr(m, "stays_in_eval", False)]
    in_eval = [name for name, m in module.named_modules() if not m.training]
    return bool(in_eval) and all(any(n == o or n.startswith(o + ".") for o in owners) for n in in_eval)
