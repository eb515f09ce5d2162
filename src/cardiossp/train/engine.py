"""The one place that builds a Lightning Trainer: precision (``train.precision``), devices/DDP, checkpoints,
loggers, progress, per-epoch log lines. Segmentation training and pretraining both use it.

Progress: on a terminal (stderr a TTY) Lightning's Rich bar; anywhere else (a cluster job's log, CI, a
pipe) no bar but ``LineProgress``: one plain line every ~1/40 of the run or 60 s (step/total, epoch,
mean loss, elapsed, ETA), never a carriage return. The lines also go to the ``cardiossp.train`` logger
(``RUN/train.log``, ``train.run.TrainLog``) whether they are shown or not."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from ..atomic import write_csv
from ..errors import ConfigError
from ..progress import ProgressLines, stderr_line
from .precision import resolve_precision

log = logging.getLogger("cardiossp.train")

def steps_per_epoch(trainer: L.Trainer, n_samples: int, batch_size: int) -> int:
    """Optimizer steps per epoch on every rank: ``SeededSampler`` pads ``n_samples`` to a multiple of
    ``trainer.world_size`` (num_nodes x devices, known once ``L.Trainer(...)`` is built), so each rank
    gets ``ceil(n_samples / world)`` items, in batches of ``batch_size`` with ``drop_last``; at least 1."""
    world = max(1, int(trainer.world_size))
    return max(1, math.ceil(n_samples / world) // batch_size)


def rank_batch(global_batch: int, world: int, key: str) -> int:
    """The batch of one process. Policy (as nnU-Net's DDP): the global batch, the number of steps and
    the learning rate do not depend on the number of processes; each of ``world`` processes takes
    ``global_batch / world`` slices per step, so a DDP run follows the schedule of the 1-process run."""
    if global_batch % world:
        raise ConfigError(f"{key} = {global_batch} does not divide among {world} processes; "
                          f"choose a multiple of {world}")
    return global_batch // world


def may_be_distributed(devices: int | str | list, num_nodes: int = 1, accelerator: str = "auto") -> bool:
    """Whether Lightning may start more than one process: more than one node, an explicit device count
    (or list) above 1, ``auto``/``-1`` devices with more than one CUDA device, or a SLURM / torchelastic
    launch of several tasks (Lightning reads those environments itself)."""
    if num_nodes > 1 or _cluster_world_size() > 1:
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1
    if "," in text:  # "0,1": a list of device ids
        return len([d for d in text.split(",") if d.strip()]) > 1
    try:
        return int(text) > 1
    except ValueError:
        return False


def _sync_batchnorm_runs_on(accelerator: str) -> bool:
    """torch's SyncBatchNorm supports CUDA (and XPU/HPU) inputs only; on the CPU it raises."""
    if accelerator in ("gpu", "cuda", "xpu", "hpu"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def _cluster_world_size() -> int:
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    try:
        if TorchElasticEnvironment.detect():
            return int(os.environ.get("WORLD_SIZE", "1"))
        if SLURMEnvironment.detect():
            return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1
    return 1


class LineProgress(Callback):
    """Plain training progress (``progress.ProgressLines``), rank 0 only: a start line (steps, epochs,
    device, precision, processes), then ``step t/total (p%) epoch e/E loss L | elapsed, ETA`` every
    ``every`` optimizer steps (default: ~40 lines a run) or ``seconds``, and at the last step; ``loss`` is
    the mean training loss of the steps since the previous line. Every line goes to the ``cardiossp.train``
    logger, and to stderr when ``echo``."""

    def __init__(self, echo: bool = True, every: int | None = None, seconds: float = 60.0, emit=None):
        self.echo, self.every, self.seconds = echo, every, seconds
        self._emit_fn = emit or stderr_line
        self.lines: ProgressLines | None = None
        self._loss, self._n = None, 0

    def emit(self, line: str) -> None:
        log.info(line)
        if self.echo:
            self._emit_fn(line)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        total, start = _total_steps(trainer), int(trainer.global_step)
        self.lines = ProgressLines(total, "step", self.emit, every=self.every, seconds=self.seconds, start=start)
        self._loss, self._n = None, 0
        per_epoch = trainer.num_training_batches
        self.emit(f"training {total} steps ({trainer.max_epochs} epochs x {per_epoch} steps)"
                  f"{f', resumed at step {start}' if start else ''} on {pl_module.device}, precision "
                  f"{trainer.precision}, {trainer.world_size} process{'es' if trainer.world_size > 1 else ''}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.lines is None or trainer.global_rank != 0:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss + loss
            self._n += 1
        step = int(trainer.global_step)

        def detail() -> str:
            text = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            if self._n:
                text += f" loss {float(self._loss) / self._n:.4g}"  # one device sync per line, not per step
            return text

        if self.lines.update(step, detail) is not None:
            self._loss, self._n = None, 0


def _total_steps(trainer) -> int:
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - a loader without a length: unknown
        return 0
    return int(total) if math.isfinite(total) else 0


class EpochLine(Callback):
    """One readable line per epoch (the CSV logger keeps the parseable record); also to the
    ``cardiossp.train`` logger (``RUN/train.log``)."""

    def __init__(self, print_fn=None):
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self._t0 = time.time()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs an epoch's validation before this hook, so its metrics are in.
        self._line(trainer)

    def _line(self, trainer) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        keep = [k for k in m if k.endswith("_epoch") or k.startswith("val_") or k == "lr"]
        parts = " ".join(f"{k.replace('_epoch', '')} {m[k]:.4g}" for k in sorted(keep))
        line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {parts} ({time.time() - self._t0:.1f} s)"
        log.info(line)
        self.print_fn(line)


def build_trainer(
    out: Path,
    max_epochs: int,
    precision: str = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    monitor: str | None = "val_dice",
    grad_clip: float = 0.0,
    val_every: int = 1,
    loggers: tuple[str, ...] = (),
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    num_nodes: int = 1,
    limit_val_batches: float | int | None = None,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = True,
) -> L.Trainer:
    """Checkpoints go to ``out/checkpoints`` (``last.ckpt`` every epoch, ``best.ckpt`` by ``monitor``),
    metrics to ``out/logs/metrics.csv``; ``loggers`` adds any of tensorboard, wandb, mlflow.
    ``progress``: Lightning's Rich bar when stderr is a terminal, else ``LineProgress`` lines on stderr
    (with ``progress=False`` neither; the lines still reach the ``cardiossp.train`` logger).

    Whenever the run may have more than one process (:func:`may_be_distributed`) the strategy is
    ``DDPStrategy(find_unused_parameters=...)`` (NCCL on GPUs, gloo on the CPU), with
    ``sync_batchnorm`` converting every BatchNorm to SyncBatchNorm (statistics over the global
    batch) on accelerators torch's SyncBatchNorm runs on (CUDA; it raises on CPU tensors, so CPU
    DDP keeps per-process BatchNorm statistics). ``trainer.world_size`` and ``trainer.is_global_zero``
    are valid right after this returns."""
    # last.ckpt after every training epoch (resume point); best.ckpt at validations by ``monitor``.
    # (Lightning writes save_last files only alongside a top-k save, so "last" is a top-1 of the latest.)
    ckpts = [ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1,
                             save_on_train_epoch_end=True, enable_version_counter=False)]
    if monitor:
        ckpts.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max",
                                     save_top_k=1, enable_version_counter=False))
    logs: list = [CSVLogger(out, name="", version="logs")]
    for name in loggers:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            logs.append(TensorBoardLogger(out, name="", version="tensorboard"))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            logs.append(WandbLogger(save_dir=str(out), name=out.name))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            logs.append(MLFlowLogger(run_name=out.name, save_dir=str(out / "mlruns")))
        else:
            raise ValueError(f"unknown logger {name!r}; choose tensorboard, wandb or mlflow")
    bars = [RichProgressBar()] if progress and _rich_ok() else []  # off a terminal: lines, no frames
    lines = LineProgress(echo=progress and not bars)
    strategy, ddp = "auto", may_be_distributed(devices, num_nodes, accelerator)
    if ddp:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)  # NCCL on GPUs, gloo on the CPU
    return L.Trainer(
        default_root_dir=out,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        sync_batchnorm=bool(sync_batchnorm and ddp and _sync_batchnorm_runs_on(accelerator)),
        precision=resolve_precision(precision, accelerator),
        benchmark=accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(),  # cudnn autotuning
        gradient_clip_val=grad_clip or None,
        check_val_every_n_epoch=val_every,
        num_sanity_val_steps=0,
        logger=logs,
        callbacks=[*ckpts, *bars, lines, EpochLine(), *(callbacks or [])],
        enable_progress_bar=bool(bars),
        use_distributed_sampler=False,  # our SeededSampler shards by rank itself
        log_every_n_steps=10,
        limit_val_batches=limit_val_batches,
        enable_model_summary=False,
    )


def resume_point(out: Path, resume: bool, finished_marker: str) -> str | None:
    """The checkpoint to resume from (``--resume``), or None for a fresh run; refuses to
    overwrite a finished or an interrupted run by accident."""
    last = out / "checkpoints" / "last.ckpt"
    if not resume:
        if (out / finished_marker).exists():
            raise ConfigError(f"{out} holds a finished run; choose another --out")
        if last.exists():
            raise ConfigError(f"{out} holds an unfinished run; pass --resume to continue it or choose another --out")
    return str(last) if resume and last.exists() else None


@contextlib.contextmanager
def kept_metrics(out: Path, resume: bool, enabled: bool = True):
    """Lightning's CSV logger deletes ``metrics.csv`` when a run resumes; keep the earlier rows
    and put them back in front of the new ones when the run ends (also when it fails). Rows the killed
    session logged after its last checkpoint (step >= the checkpoint's ``global_step``) are dropped:
    the resumed session logs those steps again.
    ``enabled=False`` (pass ``trainer.is_global_zero``) makes it a no-op on the ranks that do not
    write the CSV, so they do not race rank 0 for the same files on a shared disk."""
    if not enabled:
        yield
        return
    path = out / "logs" / "metrics.csv"
    before = out / "logs" / "metrics.before-resume.csv"
    last = out / "checkpoints" / "last.ckpt"
    if resume and path.is_file() and last.is_file():
        from ..models.weights import load_torch_file

        resumed_at = int(load_torch_file(last, "resume checkpoint", mmap=True).get("global_step", 0))
        rows = pd.read_csv(path)
        if "step" in rows:
            write_csv(path, rows[rows["step"] < resumed_at])
    if resume and path.is_file():
        if before.is_file():  # an earlier resume: accumulate
            merged = pd.concat([pd.read_csv(before), pd.read_csv(path)], ignore_index=True)
            write_csv(before, merged)
            path.unlink()
        else:
            path.replace(before)
    try:
        yield
    finally:
        if before.is_file():
            parts = [pd.read_csv(before)] + ([pd.read_csv(path)] if path.is_file() else [])
            write_csv(path, pd.concat(parts, ignore_index=True))
            before.unlink()


def _rich_ok() -> bool:
    """Whether a live (carriage-return) progress bar suits stderr: a terminal, not a log file or pipe."""
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
