"""Typed configuration: dataclasses per component, YAML presets, ``key.sub=value`` overrides.

A preset is a YAML file in ``cardiossp/presets/<kind>/<name>.yaml`` (or any path) holding
the fields that differ from the dataclass defaults. The resolved config is saved into
every run folder (``config.yaml``), so a run can be repeated from that file alone.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .atomic import write_yaml
from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
C = TypeVar("C")


@dataclass
class ModelConfig:
    """A registered model (``unet``, ``resnet_unet``, ``deeplabv3``; see ``models.build``). The geometry
    fields below are the ``unet``'s (models whose factory does not take them ignore them); other
    models' keywords go in ``options``, e.g. ``{depth: 50, decoder_channels: [256, 128, 64, 32, 16]}``."""

    name: str = "unet"
    n_stages: int = 7
    base_features: int = 32
    max_features: int = 512
    width: float = 1.0  # feature multiplier (0.5 = half width)
    norm: str = "instance"  # the paper's repo used "batch"
    deep_supervision: bool = True  # ignored by models without it (deeplabv3)
    options: dict = field(default_factory=dict)  # model-specific factory keywords
    encoder_weights: str | None = None  # local file (e.g. a torchvision ResNet state dict) initialising the encoder


@dataclass
class DataConfig:
    patch_size: int = 256  # training crop (pixels); inference runs on the whole cached slice
    augment: str = "paper"  # paper | nnunet | none
    augment_on: str = "auto"  # device (batched, data.batch_augment) | loader (per sample, workers) | auto
    phases: list[str] = field(default_factory=lambda: ["ED", "ES"])
    batch_size: int = 32
    num_workers: int = 2
    task: str = "cardiac"  # cardiac: LV, MYO, RV; lv: binary LV vs background (echo); see data/labels.py TASKS


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_power: float = 0.9
    grad_clip: float = 12.0  # nnU-Net's clip norm; 0 disables


@dataclass
class ScheduleConfig:
    epochs: int = 1000
    epoch_mode: str = "iterations"  # iterations: iters_per_epoch batches (nnU-Net); pass: one pass over the slices
    iters_per_epoch: int = 250
    val_every: int = 1


@dataclass
class FinetuneConfig:
    init: str | None = None  # pretraining run folder or checkpoint
    strategy: str = "all"  # all | frozen-encoder | warmup-frozen | multitask (needs a `position` init run)
    warmup_frozen_epochs: int = 0
    lr: float = 0.005  # paper: fine-tuning lr
    pretext_weight: float = 1.0  # multitask: loss = segmentation + pretext_weight * position pretext loss
    allow_partial: bool = False  # accept an init whose weights fill under half of the model's tensors


@dataclass
class SemiConfig:
    """Semi-supervised fine-tuning (``cardiossp.semi``): ``method`` None = labeled slices only."""

    method: str | None = None  # mean-teacher | unimatch | bcp
    options: dict = field(default_factory=dict)  # the method's options (see its ``defaults``)
    unlabeled_batch_size: int | None = None  # None: the labeled batch size


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    precision: str = "auto"  # auto: bf16-mixed on CUDA / CPUs with native bf16, 16-mixed on older GPUs, else 32-true
    channels_last: bool = False  # NHWC network and batches (measured 1.02x cpu net, 1.19x paper net on a CPU)
    seed: int = 0
    labeled_subjects: int | None = None  # label budget (N training subjects); None = all
    subset: str | None = None  # a named subset of the split (e.g. vendor_AB)
    devices: int | str = "auto"  # per node
    num_nodes: int = 1
    accelerator: str = "auto"


@dataclass
class PretrainDataConfig:
    input_size: int = 256  # global crop / view size (pixels)
    augment: str = "paper"
    augment_on: str = "auto"  # device (batched views, data.batch_augment) | loader (per sample) | auto
    batch_size: int = 128
    num_workers: int = 2


@dataclass
class PretrainOptimConfig:
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    warmup_epochs: int = 0  # linear warm-up, then cosine decay to 0
    grad_clip: float = 0.0


@dataclass
class PretrainConfig:
    """One self-supervised pretraining run (de Mooij et al. 2024, Appendix A). ``method_options`` go to the method
    (see each method's ``defaults``); ``per_method`` sections in a preset are merged in
    for the chosen method only."""

    method: str = "mim"
    method_options: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(epochs=100, epoch_mode="pass"))
    precision: str = "auto"
    seed: int = 0
    devices: int | str = "auto"  # per node
    num_nodes: int = 1
    accelerator: str = "auto"


def from_dict(cls: type[C], data: dict, where: str) -> C:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        kwargs[name] = from_dict(type(sub), value, f"{where}.{name}") if dataclasses.is_dataclass(sub) else value
    return cls(**kwargs)


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def resolve_preset(kind: str, preset: str | Path) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = PRESET_DIR / kind / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml"))
        raise ConfigError(f"unknown {kind} preset {preset!r}; known: {', '.join(known)} (or a .yaml path)")
    return path


def load_config(cls: type[C], kind: str, preset: str | Path | None = None,
                overrides: list[str] | dict | None = None) -> C:
    """Dataclass defaults <- preset YAML <- overrides (``["optim.lr=0.1", ...]`` or a nested dict)."""
    data: dict = {}
    if preset is not None:
        data = yaml.safe_load(resolve_preset(kind, preset).read_text()) or {}
    per_method = data.pop("per_method", None) or {}
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            _set(data, k, v)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            k, v = item.split("=", 1)
            _set(data, k.strip(), yaml.safe_load(v))
    if per_method and "method" in data:
        data = _merge(per_method.get(data["method"], {}), data, prefer_first=False)
    return from_dict(cls, data, kind)


def _merge(base: dict, top: dict, prefer_first: bool = False) -> dict:
    """Deep merge: values of ``top`` win over ``base``."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_run_config(cfg, folder: Path, **extra) -> Path:
    """Write the resolved config, git SHA and extra facts to ``folder/config.yaml`` (atomically)."""
    from . import __version__

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"config": to_dict(cfg), "git_sha": git_sha(), "cardiossp_version": __version__, **extra}
    return write_yaml(folder / "config.yaml", doc)
