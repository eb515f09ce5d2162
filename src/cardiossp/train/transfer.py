"""Fine-tuning from a pretraining run: weight transfer and encoder freezing strategies.

Strategies (``FinetuneConfig.strategy``): ``all`` (SSL+All of Bai et al. 2019: every layer
trains), ``frozen-encoder`` (SSL+Decoder: the pretrained encoder stays fixed),
``warmup-frozen`` (encoder frozen for ``warmup_frozen_epochs`` epochs, then all train).
Loading is loud (DESIGN habit 5): it reports transferred, missing, unexpected and
shape-mismatched keys, and fails when nothing transfers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..config import FinetuneConfig
from ..errors import CheckpointError, ConfigError
from ..models import group_parameters

log = logging.getLogger("cardiossp")
STRATEGIES = ("all", "frozen-encoder", "warmup-frozen")


def load_pretrained(path: str | Path) -> dict:
    """Read ``pretrained.pt`` (a pretraining run folder or the file itself), weights only."""
    path = Path(path)
    if path.is_dir():
        path = path / "pretrained.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no pretrained weights (did the pretraining run finish?)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(f"{path}: cannot read pretrained weights: {e}") from None
    if not isinstance(record, dict) or record.get("format") != "cardiossp-pretrained-1":
        raise CheckpointError(f"{path}: not a cardiossp pretrained-weights file")
    record["path"] = str(path)
    return record


def transfer_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "") -> dict:
    """Copy every key of ``state`` whose name and shape fit ``model``; return a report."""
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    if not fits:
        raise CheckpointError(
            f"{source}: no tensor of the pretrained weights fits this model "
            f"({len(mismatched)} shape mismatches, {len(unexpected)} unknown keys) - same architecture and width?")
    model.load_state_dict(fits, strict=False)
    report = {"transferred": len(fits), "mismatched": mismatched, "unexpected": unexpected,
              "not_pretrained": sorted(k for k in own if k not in fits)}
    msg = (f"loaded {len(fits)} pretrained tensors from {source}; {len(report['not_pretrained'])} keys stay "
           f"at their initialisation")
    if mismatched or unexpected:
        msg += f"; shape mismatches: {mismatched[:8]}; unexpected: {unexpected[:8]}"
    log.warning(msg) if (mismatched or unexpected) else log.info(msg)
    print(msg)
    return report


def apply_finetune_init(module, ft: FinetuneConfig) -> dict:
    """Load ``ft.init`` into ``module.model`` (a SegmentationModule) and check the strategy."""
    if ft.strategy not in STRATEGIES:
        raise ConfigError(f"unknown fine-tuning strategy {ft.strategy!r}; choose {', '.join(STRATEGIES)}")
    record = load_pretrained(ft.init)
    return transfer_weights(module.model, record["state_dict"], record["path"])


def set_encoder_trainable(model: nn.Module, trainable: bool) -> int:
    params = group_parameters(model)["encoder"]
    for p in params:
        p.requires_grad_(trainable)
    return len(params)


class FreezeEncoder(Callback):
    """Freezes the encoder at the start of training; ``warmup-frozen`` releases it after N epochs.

    DDP fixes the parameters it synchronises when it wraps the model (after ``setup``), so
    ``requires_grad`` may only change before that: ``frozen-encoder`` switches it off in ``setup``
    (no encoder backward at all); ``warmup-frozen`` keeps it on and drops the encoder's gradients
    before each optimizer step while frozen (SGD then skips those tensors: no step, no weight
    decay, no momentum). Switching ``requires_grad`` later crashes DDP ("Expected to have finished
    reduction") or leaves the released encoder unsynchronised across processes.
    """

    def __init__(self, ft: FinetuneConfig):
        self.ft = ft
        self._encoder: list[nn.Parameter] = []

    def _frozen_at(self, epoch: int) -> bool:
        if self.ft.strategy == "frozen-encoder":
            return True
        return self.ft.strategy == "warmup-frozen" and epoch < self.ft.warmup_frozen_epochs

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._encoder = group_parameters(pl_module.model)["encoder"]
        set_encoder_trainable(pl_module.model, self.ft.strategy != "frozen-encoder")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._frozen_at(trainer.current_epoch):
            for p in self._encoder:
                p.grad = None
