"""Segmentation checkpoints and run folders: find, identify and load them without executing code.

A run folder (``RUN/checkpoints/best.ckpt``, else ``last.ckpt``), a Lightning checkpoint of a training run or
an exported model file (``cardiossp export --format cardiossp``) all load through ``load_model``, with
``torch.load(weights_only=True)`` (``models.weights.load_torch_file``); a pretraining run or its weights get
one line saying to fine-tune first. The checkpoint's model record (``RECORD_KEY``) carries the grid the
model was trained on (read by ``inference.Segmenter``, written by ``train.export``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from .config import TrainConfig, from_dict
from .errors import CheckpointError, ConfigError
from .models.weights import fit_state_dict, load_torch_file

RECORD_KEY = "cardiossp"  # the entry of a checkpoint / model file holding its model record
MODEL_FILE_FORMAT = "cardiossp-model-file-1"  # train.export.export_model: {format, config, state_dict, cardiossp}
EMA_TEACHER_PREFIX = "semi.teacher.net."  # a semi-supervised run's EMA teacher in its Lightning state_dict


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file, or a run folder -> its ``checkpoints/best.ckpt`` (else ``last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        if run_kind(p) == "pretraining":
            raise CheckpointError(f"{p}: {_PRETRAINING_NOT_SEGMENTATION.format(what='a pretraining run', src=p)}")
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise CheckpointError(f"{p}: no checkpoints/best.ckpt or checkpoints/last.ckpt (not a finished training run?)")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


_PRETRAINING_NOT_SEGMENTATION = ("{what}, not a segmentation model (no trained segmentation head): fine-tune it "
                                 "first (cardiossp train --init {src} ...) and give that training run")


def run_kind(folder: str | Path) -> str | None:
    """``"pretraining"`` or ``"segmentation"`` for a run folder (its ``config.yaml``, else its files), None
    when it is neither."""
    folder = Path(folder)
    try:
        doc = yaml.safe_load((folder / "config.yaml").read_text())
        cfg = doc.get("config") if isinstance(doc, dict) else None
    except (OSError, yaml.YAMLError):
        cfg = None
    if isinstance(cfg, dict) and "method" in cfg:
        return "pretraining"
    if isinstance(cfg, dict) and "finetune" in cfg:
        return "segmentation"
    return "pretraining" if (folder / "pretrained.pt").is_file() else None


def checkpoint_kind(obj) -> tuple[str | None, str | None]:
    """(kind, SSP method) of a loaded torch record: ``("pretrained", m)`` for a ``pretrained.pt``,
    ``("pretraining", m)`` for a pretraining run's Lightning checkpoint, ``("segmentation", None)`` for a
    training run's, ``(None, None)`` otherwise."""
    if not isinstance(obj, dict):
        return None, None
    if obj.get("format") == "cardiossp-pretrained-1":
        return "pretrained", obj.get("method")
    if obj.get("format") == MODEL_FILE_FORMAT:
        return "segmentation", None
    hp = obj.get("hyper_parameters")
    cfg = hp.get("cfg") if isinstance(hp, dict) else None
    if isinstance(cfg, dict) and "method" in cfg:
        return "pretraining", cfg.get("method")
    if isinstance(cfg, dict) and "finetune" in cfg:
        return "segmentation", None
    return None, None


def run_folder(path: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN`` for ``RUN/checkpoints/x.ckpt``), if it has a config.yaml."""
    p = Path(path)
    folder = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    return folder if (folder / "config.yaml").is_file() else None


def read_run_config(run: str | Path) -> dict:
    """``RUN/config.yaml`` as a dict (keys config, cache, split, ...)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {run} a training run folder?")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return doc


def cache_grid(cache: str | Path) -> tuple[float, int] | None:
    """(spacing mm, size px) from ``cache/cache.json``; None if unavailable."""
    import json

    try:
        info = json.loads((Path(cache) / "cache.json").read_text())
        return float(info["spacing"]), int(info["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_model(cfg: TrainConfig) -> nn.Module:
    from .train.segmentation import build_segmentation_model

    return build_segmentation_model(cfg, load_encoder_weights=False)  # the checkpoint holds every weight


def load_model(path: str | Path, ema_teacher: bool = False
               ) -> tuple[TrainConfig, dict[str, torch.Tensor], nn.Module, Path, dict | None]:
    """(config, network state dict, model with it loaded, checkpoint file, model record or None) of a
    Lightning checkpoint of a training run or of an exported model file. ``ema_teacher``: the weights of the
    run's EMA teacher (``semi.teacher.net.*``, ``mean-teacher`` and ``bcp`` runs) instead of the student's."""
    ckpt = resolve_checkpoint(path)
    obj = load_torch_file(ckpt, "checkpoint")
    kind, method = checkpoint_kind(obj)
    if kind in ("pretrained", "pretraining"):
        what = (f"pretrained weights of a {method} pretraining run" if kind == "pretrained"
                else f"a checkpoint of a {method} pretraining run")
        src = ckpt if kind == "pretrained" else (run_folder(ckpt) or ckpt)
        raise CheckpointError(f"{ckpt}: {_PRETRAINING_NOT_SEGMENTATION.format(what=what, src=src)}")
    if isinstance(obj, dict) and obj.get("format") == MODEL_FILE_FORMAT:  # an exported model file
        if ema_teacher:
            raise CheckpointError(f"{ckpt}: an exported model file holds one network, no EMA teacher; give the "
                                  "training run instead")
        cfg_dict, weights = obj.get("config"), obj.get("state_dict")
        if not isinstance(cfg_dict, dict) or not isinstance(weights, dict) or not weights:
            raise CheckpointError(f"{ckpt}: damaged cardiossp model file (needs config and state_dict)")
    else:
        hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
        state = obj.get("state_dict") if isinstance(obj, dict) else None
        if not isinstance(hp, dict) or not isinstance(hp.get("cfg"), dict) or not isinstance(state, dict):
            raise CheckpointError(f"{ckpt}: not a cardiossp segmentation checkpoint (needs hyper_parameters.cfg "
                                  f"and state_dict)")
        cfg_dict = hp["cfg"]
        prefix = EMA_TEACHER_PREFIX if ema_teacher else "model."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights and ema_teacher:
            raise CheckpointError(f"{ckpt}: no EMA teacher in this checkpoint (only mean-teacher and bcp runs "
                                  "have one); leave out --ema-teacher")
        if not weights:
            raise CheckpointError(f"{ckpt}: state_dict holds no 'model.*' weights: not a cardiossp segmentation "
                                  "checkpoint")
    try:
        cfg = from_dict(TrainConfig, cfg_dict, f"{ckpt}:cfg")
        model = build_model(cfg)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{ckpt}: its config cannot build a model: {e}") from None
    fit_state_dict(model, weights, str(ckpt)).require_exact("weights do not fit the architecture in its config")
    model.load_state_dict(weights)
    return cfg, weights, model, ckpt, read_model_record(obj, ckpt, cfg)


def read_model_record(obj, ckpt: str | Path = "", cfg: TrainConfig | None = None) -> dict | None:
    """The model record of a loaded checkpoint or model file (``obj["cardiossp"]``), checked: None for a
    checkpoint written before records existed; a CheckpointError when it is there but unusable (no valid
    grid, a normalisation this code does not do, another task than the config's)."""
    record = obj.get(RECORD_KEY) if isinstance(obj, dict) else None
    if record is None:
        return None
    try:
        grid = record["grid"]
        spacing, size = float(grid["spacing_mm"]), int(grid["size_px"])
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{ckpt}: damaged model record (no grid spacing_mm / size_px)") from None
    if not (np.isfinite(spacing) and spacing > 0 and size > 0):
        raise CheckpointError(f"{ckpt}: model record grid {spacing} mm / {size} px is not a grid")
    norm = (record.get("normalisation") or {}).get("method", "zscore")
    if norm != "zscore":
        raise CheckpointError(f"{ckpt}: the model expects {norm!r} normalisation; this cardiossp does zscore only")
    if cfg is not None and record.get("task", cfg.data.task) != cfg.data.task:
        raise CheckpointError(f"{ckpt}: model record task {record.get('task')!r} differs from its config's "
                              f"{cfg.data.task!r}")
    return record


def record_grid(record: dict) -> tuple[float, int]:
    """(spacing mm, size px) of a checked model record."""
    return float(record["grid"]["spacing_mm"]), int(record["grid"]["size_px"])


def load_checkpoint(path: str | Path) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """Load a segmentation checkpoint with ``torch.load(weights_only=True)`` (``models.weights.load_torch_file``).

    ``path``: a ``.ckpt`` file or a run folder (``checkpoints/best.ckpt``, else ``last.ckpt``).
    Returns the TrainConfig and the network's state dict (keys of PlainConvUNet, ``model.``
    stripped), verified against the architecture the config builds.
    """
    cfg, weights, _, _, _ = load_model(path)
    return cfg, weights
