"""Fine-tuning from a pretraining run: weight transfer and encoder freezing strategies.

Strategies (``FinetuneConfig.strategy``): ``all`` (SSL+All of Bai et al. 2019: every layer
trains), ``frozen-encoder`` (SSL+Decoder: the pretrained encoder stays fixed),
``warmup-frozen`` (encoder frozen for ``warmup_frozen_epochs`` epochs, then all train),
``multitask`` (SSL+MultiTask: all layers train on ``segmentation loss + pretext_weight *
pretext loss``; the pretext head of a ``position`` pretraining run comes along and keeps
training on the labeled batches, whose slices carry their geometry targets too; any other
init method is a ConfigError, since only the position pretext has a loss on single labeled
slices). The head is part of the training module only: checkpoints keep it as ``pretext.*``
next to ``model.*``, and inference loads ``model.*`` alone.
Loading is loud: it reports transferred, missing, unexpected and
shape-mismatched keys, and fails when nothing transfers or when what transfers fills under half
of the model's tensors (unless ``finetune.allow_partial``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..config import FinetuneConfig
from ..errors import CheckpointError, ConfigError
from ..models import group_parameters
from ..models.weights import fit_state_dict, load_torch_file, warn_unrecorded

log = logging.getLogger("cardiossp")
STRATEGIES = ("all", "frozen-encoder", "warmup-frozen", "multitask")


def multitask_methods() -> list[str]:
    """Registered SSP methods whose pretext head can keep training in fine-tuning (``SSPMethod.multitask``)."""
    from ..ssp import SSP_METHODS

    return [name for name in SSP_METHODS.names() if SSP_METHODS.get(name).multitask]


INIT_EXPECTS = "--init expects a pretraining run folder (cardiossp pretrain) or its pretrained.pt"


def load_pretrained(path: str | Path) -> dict:
    """Read ``pretrained.pt`` (a pretraining run folder or the file itself), weights only, its
    ``pretrained.pt.sha256`` checked (``models.weights.load_torch_file``; a file without one loads with
    a warning). Anything else (a segmentation run, an unfinished pretraining run, a Lightning
    checkpoint, an unreadable file) is a CheckpointError saying what it is."""
    from ..checkpoints import checkpoint_kind, run_kind

    path = Path(path)
    if path.is_dir():
        kind = run_kind(path)
        if not (path / "pretrained.pt").is_file():
            if kind == "segmentation":
                raise CheckpointError(f"{path}: a segmentation (training) run, not a pretraining run: {INIT_EXPECTS}")
            if kind == "pretraining":
                raise CheckpointError(f"{path}: no pretrained.pt: the pretraining run has not finished (continue it "
                                      "with cardiossp pretrain ... --resume)")
            raise CheckpointError(f"{path}: no pretrained weights (no pretrained.pt): {INIT_EXPECTS}")
        path = path / "pretrained.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no pretrained weights (file not found): {INIT_EXPECTS}")
    record = load_torch_file(path, "pretrained weights")
    kind, _ = checkpoint_kind(record)
    if kind == "segmentation":
        raise CheckpointError(f"{path}: a segmentation checkpoint, not pretrained weights: {INIT_EXPECTS}")
    if kind == "pretraining":
        raise CheckpointError(f"{path}: a pretraining run's Lightning checkpoint, not its pretrained weights: "
                              f"{INIT_EXPECTS} (written when the run finishes)")
    if kind != "pretrained":
        raise CheckpointError(f"{path}: not a cardiossp pretrained-weights file: {INIT_EXPECTS}")
    warn_unrecorded(path)
    record["path"] = str(path)
    return record


def transfer_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "",
                     allow_partial: bool = False) -> dict:
    """Copy every key of ``state`` whose name and shape fit ``model``; return a report.

    Refused (CheckpointError, model untouched) when nothing fits, or when what fits is under half of
    the model's tensors (another width or depth: most of the network would stay at its
    initialisation) unless ``allow_partial``. An encoder-only pretraining of the same architecture
    fills well over half (e.g. 128 of the tiny U-Net's 188 tensors)."""
    fit = fit_state_dict(model, state, source)
    fits, mismatched, unexpected = fit.fits, sorted(fit.mismatched), sorted(fit.unexpected)
    total = len(model.state_dict())
    if not fits:
        raise CheckpointError(
            f"{source}: no tensor of the pretrained weights fits this model "
            f"({len(mismatched)} shape mismatches, {len(unexpected)} unknown keys) - same architecture and width?")
    if 2 * len(fits) < total and not allow_partial:
        raise CheckpointError(
            f"{source}: only {len(fits)} of the model's {total} tensors fit these pretrained weights "
            f"({len(mismatched)} shape mismatches, {len(unexpected)} unknown keys, {len(fit.missing)} not in the "
            f"file), so most of the network would stay at its initialisation - same architecture and width as the "
            f"pretraining run? To fine-tune from them anyway: --set finetune.allow_partial=true")
    model.load_state_dict(fits, strict=False)
    report = {"transferred": len(fits), "mismatched": mismatched, "unexpected": unexpected,
              "not_pretrained": sorted([*fit.missing, *fit.mismatched])}
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
    return transfer_weights(module.model, record["state_dict"], record["path"], allow_partial=ft.allow_partial)


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


def pretext_head(record: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(options, state dict) of the pretext head a ``position`` run saved in its ``pretrained.pt``."""
    head = record.get("pretext")
    if not isinstance(head, dict) or "state_dict" not in head:
        raise CheckpointError(f"{record['path']}: holds no pretext head (not a position pretraining run, or one "
                              "made before heads were saved: pretrain it again)")
    return head.get("options", {}), head["state_dict"]


def multitask_pretext(ft: FinetuneConfig, model: nn.Module) -> nn.Module:
    """SSL+MultiTask (Bai et al. 2019): the position pretext head of run ``ft.init`` with its
    trained weights, sized for ``model``'s bottleneck."""
    from ..models import bottleneck_dim
    from ..ssp.position import AnatomicalPosition, build_pretext

    if not ft.init:
        raise ConfigError("strategy multitask needs finetune.init: a 'position' pretraining run whose pretext "
                          "head keeps training next to the segmentation")
    record = load_pretrained(ft.init)
    allowed = multitask_methods()
    if record.get("method") not in allowed:
        raise ConfigError(f"{record['path']}: strategy multitask needs a {' or '.join(allowed)} pretraining "
                          f"run (its pretext loss is computed on the labeled slices); this run pretrained "
                          f"{record.get('method')!r}: use strategy all, frozen-encoder or warmup-frozen")
    options, state = pretext_head(record)
    options = {**AnatomicalPosition.defaults, **options}
    pretext = build_pretext(bottleneck_dim(model), options)
    try:
        pretext.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{record['path']}: the pretext head does not fit this model: {e}") from None
    print(f"multitask: pretext head ({len(state)} tensors) loaded from {record['path']}; "
          f"loss = segmentation + {ft.pretext_weight} x position pretext")
    return pretext


@contextmanager
def tap_encoder(model: nn.Module) -> Iterator[dict]:
    """Within the block, ``tap["features"]`` is what ``model.encoder`` returned last (one forward
    of ``model`` gives both the segmentation and the features the pretext head needs)."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"SSL+MultiTask needs a model with an '.encoder' module; {type(model).__name__} has none")
    tap: dict = {}
    handle = encoder.register_forward_hook(lambda mod, args, out: tap.__setitem__("features", out))
    try:
        yield tap
    finally:
        handle.remove()


def multitask_terms(
    model: nn.Module, pretext: nn.Module, seg_loss: nn.Module, batch: dict, pretext_weight: float
) -> dict[str, torch.Tensor]:
    """SSL+MultiTask (Bai et al. 2019) on a labeled batch: ``loss = seg_loss + pretext_weight *
    pretext_loss``; also returns the segmentation terms and ``pretext_*`` terms."""
    with tap_encoder(model) as tap:
        out = model(batch["image"])
    if "features" not in tap:
        raise ConfigError(f"{type(model).__name__}.forward did not call its '.encoder'; SSL+MultiTask cannot tap it")
    terms = seg_loss.terms(out, batch["segmentation"])
    pre = pretext(tap["features"], batch)
    terms["seg_loss"] = terms["loss"]
    terms.update({f"pretext_{k}": v for k, v in pre.items() if k != "loss"})
    terms["pretext_loss"] = pre["loss"]
    terms["loss"] = terms["seg_loss"] + pretext_weight * pre["loss"]
    return terms
