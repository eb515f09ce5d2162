"""Export a model: one shareable cardiossp model file, or weights in the layout nnU-Net v2 loads.

``export_model`` (``cardiossp export --format cardiossp``): one file ``{"format": "cardiossp-model-file-1",
"config": TrainConfig dict, "state_dict": network weights, "cardiossp": model record}`` (the record as in
every checkpoint, ``segmentation.model_record``: grid, normalisation, labels, task, model, version, git
SHA); ``Segmenter.from_checkpoint`` / ``cardiossp predict --model FILE`` load it anywhere, no run folder or
cache needed. Plain types and tensors only, read with ``torch.load(weights_only=True)``.

``export_nnunet`` (``--format nnunet``): weights in the layout nnU-Net v2 loads with
``nnunetv2.run.load_pretrained_weights``.

nnU-Net's rule: the file holds ``{"network_weights": state_dict}``; every key of the target
network except those containing ``.seg_layers.`` must be present with the same shape.
From a segmentation run we export the trained network; from a pretraining run the
pretrained tensors, completed by a fresh nnU-Net initialisation of the parts the method
does not pretrain (e.g. the decoder of an encoder-only method), since nnU-Net's loader
requires every non-segmentation key.

Next to either file goes its SHA-256 in ``<out>.sha256`` (``sha256sum`` format: ``sha256sum -c out.pth.sha256``
in its folder checks it; cardiossp checks it whenever it reads the file, ``models.weights``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..data.labels import NUM_CLASSES
from ..errors import CheckpointError, ConfigError
from ..models import build_from_config
from ..models.weights import fit_state_dict, save_weights


def _require_unet(m: ModelConfig, run: Path) -> None:
    if m.name != "unet":
        raise ConfigError(f"{run}: its model is {m.name!r}; only 'unet' (nnU-Net's PlainConvUNet) can be exported "
                          "to nnU-Net")


def _network(m: ModelConfig, run: Path) -> torch.nn.Module:
    _require_unet(m, run)
    return build_from_config(m, NUM_CLASSES, deep_supervision=True, load_encoder_weights=False)


def exportable_state(run: str | Path) -> dict[str, torch.Tensor]:
    """State dict (nnU-Net key names) of a training run's best/last checkpoint or a pretraining run."""
    run = Path(run)
    if (run / "pretrained.pt").is_file() or run.name == "pretrained.pt":
        from .transfer import load_pretrained

        record = load_pretrained(run)
        net = _network(from_dict(ModelConfig, record["model"], "model"), run)
        pretrained = {k: v for k, v in record["state_dict"].items() if ".seg_layers." not in k}  # never exported
        fit = fit_state_dict(net, pretrained, record["path"])
        if fit.mismatched:  # nnU-Net's loader would refuse the file
            raise CheckpointError(f"{fit.source}: pretrained weights do not fit the network their config builds: "
                                  f"{fit.describe(theirs='pretrained')}")
        return {**net.state_dict(), **fit.fits}  # keys the method does not pretrain: fresh initialisation
    from ..checkpoints import load_checkpoint

    cfg, state = load_checkpoint(run)
    if not isinstance(cfg, TrainConfig):
        raise CheckpointError(f"{run}: not a segmentation run")
    _require_unet(cfg.model, run)
    return state


def export_nnunet(run: str | Path, out: str | Path) -> int:
    """Write ``{"network_weights": ...}`` to ``out`` (atomically) and ``<out>.sha256``; returns the number
    of tensors."""
    state = {k: v.detach().cpu().clone() for k, v in exportable_state(run).items() if ".seg_layers." not in k}
    if not state:
        raise CheckpointError(f"{run}: nothing to export")
    save_weights({"network_weights": state, "exported_by": "cardiossp", "source": str(run)}, out)
    return len(state)


def export_model(run: str | Path, out: str | Path) -> dict:
    """Write the cardiossp model file of a training run (its best / last checkpoint), a checkpoint or a model
    file to ``out`` (atomically) and ``<out>.sha256``; returns its model record. A checkpoint written before
    checkpoints carried a record gets one from its run's training cache (and the version and git SHA of its
    config.yaml); without that cache its grid is unknown and it is refused."""
    from ..checkpoints import MODEL_FILE_FORMAT, RECORD_KEY, cache_grid, load_model, read_run_config, run_folder
    from .segmentation import model_record

    cfg, weights, _, ckpt, record = load_model(run)
    if record is None:
        folder = run_folder(ckpt)
        doc = read_run_config(folder) if folder is not None else {}
        grid = cache_grid(doc["cache"]) if doc.get("cache") else None
        if grid is None:
            raise CheckpointError(f"{ckpt}: a checkpoint without a model record (written by an older cardiossp) "
                                  "and its run's training cache is unavailable, so its input grid is unknown; "
                                  "export it where the cache named in its config.yaml exists")
        record = model_record(cfg, *grid, version=doc.get("cardiossp_version"), git_sha=doc.get("git_sha"))
    state = {k: v.detach().cpu().clone() for k, v in weights.items()}
    save_weights({"format": MODEL_FILE_FORMAT, "config": to_dict(cfg), "state_dict": state, RECORD_KEY: record,
                  "source": ckpt.name if run_folder(ckpt) is None else f"{run_folder(ckpt).name}/{ckpt.name}"}, out)
    return record
