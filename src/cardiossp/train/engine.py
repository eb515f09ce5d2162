"""The one place that builds a Lightning Trainer: precision, devices/DDP, checkpoints, loggers,
progress, per-epoch log lines. Segmentation training and pretraining both use it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from ..errors import ConfigError


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """auto: bf16-mixed on GPUs that support it, else 16-mixed on CUDA, 32-true on the CPU."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class EpochLine(Callback):
    """One readable line per epoch (the CSV logger keeps the parseable record)."""

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
        self.print_fn(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {parts} "
                      f"({time.time() - self._t0:.1f} s)")


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
) -> L.Trainer:
    """Checkpoints go to ``out/checkpoints`` (``last.ckpt`` every epoch, ``best.ckpt`` by ``monitor``),
    metrics to ``out/logs/metrics.csv``; ``loggers`` adds any of tensorboard, wandb, mlflow."""
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
    bars = [RichProgressBar() if _rich_ok() else TQDMProgressBar()] if progress else []
    strategy = "auto"
    if devices not in ("auto", 1, "1") or num_nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)  # NCCL on GPUs, gloo on the CPU
    return L.Trainer(
        default_root_dir=out,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=resolve_precision(precision, accelerator),
        gradient_clip_val=grad_clip or None,
        check_val_every_n_epoch=val_every,
        num_sanity_val_steps=0,
        logger=logs,
        callbacks=[*ckpts, *bars, EpochLine(), *(callbacks or [])],
        enable_progress_bar=progress,
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
def kept_metrics(out: Path, resume: bool):
    """Lightning's CSV logger deletes ``metrics.csv`` when a run resumes; keep the earlier rows
    and put them back in front of the new ones when the run ends (also when it fails)."""
    path = out / "logs" / "metrics.csv"
    before = out / "logs" / "metrics.before-resume.csv"
    if resume and path.is_file():
        if before.is_file():  # an earlier resume: accumulate
            merged = pd.concat([pd.read_csv(before), pd.read_csv(path)], ignore_index=True)
            merged.to_csv(before, index=False)
            path.unlink()
        else:
            path.replace(before)
    try:
        yield
    finally:
        if before.is_file():
            parts = [pd.read_csv(before)] + ([pd.read_csv(path)] if path.is_file() else [])
            tmp = path.with_suffix(".tmp")
            pd.concat(parts, ignore_index=True).to_csv(tmp, index=False)
            tmp.replace(path)
            before.unlink()


def _rich_ok() -> bool:
    import sys

    return sys.stderr.isatty()
