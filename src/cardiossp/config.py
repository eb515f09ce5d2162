"""Typed configuration: dataclasses per component, YAML presets, ``key.sub=value`` overrides.

A preset is a YAML file in ``cardiossp/presets/<kind>/<name>.yaml`` (or any path) holding
the fields that differ from the dataclass defaults. The resolved config is saved into
every run folder (``config.yaml``), so a run can be repeated from that file alone (give it as the preset).

Every field declares its type and rule (range, choices) next to it with ``config_checks.spec``;
``from_dict`` (so ``load_config``: presets, ``--set`` overrides, plan ``set:`` blocks, saved configs)
checks them all before any work and raises one ``ConfigError`` line naming each bad key:
``train config: schedule.epochs must be an integer >= 1 (got -1)``.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .atomic import write_yaml
from .config_checks import Names, build, check_config, read_yaml_mapping, spec, yaml_problem
from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
C = TypeVar("C")


# Choices owned elsewhere, looked up when a value is checked (see config_checks.Names).
MODEL_NAMES = Names("cardiossp.models", "MODELS")
NORMS = Names("cardiossp.models.unet", "NORMS")
AUGMENT_PRESETS = Names("cardiossp.data.augment", "PRESETS")
TASKS = Names("cardiossp.data.labels", "TASKS")
STRATEGIES = Names("cardiossp.train.transfer", "STRATEGIES")
SEMI_METHODS = Names("cardiossp.semi", "SEMI_METHODS")
SSP_METHODS = Names("cardiossp.ssp", "SSP_METHODS")
AUGMENT_ON = ("auto", "device", "loader")
EPOCH_MODES = ("iterations", "pass")
PHASES = ("ED", "ES")
# What Lightning's Trainer(precision=...) takes, plus auto (train/precision.resolve_precision).
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true",
              "64", "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MAX_SEED = 2**31 - 1
MIN_SIZE = 16  # smallest training patch / pretraining view (pixels)


def _devices_ok(value: int | str) -> bool:
    """Lightning's ``devices``: auto, -1 (all), a count >= 1, or device ids ``"0,1"``."""
    if isinstance(value, int):
        return value >= 1 or value == -1
    text = value.strip()
    ids = [d.strip() for d in text.split(",")]
    return text in ("auto", "-1") or (all(d.isdigit() for d in ids) and (len(ids) > 1 or int(ids[0]) >= 1))


DEVICES = (_devices_ok, "auto, -1, a device count >= 1 or device ids such as '0,1'")


@dataclass
class ModelConfig:
    """A registered model (``unet``, ``resnet_unet``, ``deeplabv3``; see ``models.build``). The geometry
    fields below are the ``unet``'s (models whose factory does not take them ignore them); other
    models' keywords go in ``options``, e.g. ``{depth: 50, decoder_channels: [256, 128, 64, 32, 16]}``."""

    name: str = spec("unet", choices=MODEL_NAMES)
    n_stages: int = spec(7, ge=2)
    base_features: int = spec(32, ge=1)
    max_features: int = spec(512, ge=1)
    width: float = spec(1.0, gt=0)  # feature multiplier (0.5 = half width)
    norm: str = spec("instance", choices=NORMS)  # the paper's repo used "batch"
    deep_supervision: bool = True  # ignored by models without it (deeplabv3)
    options: dict = spec(factory=dict)  # model-specific factory keywords
    encoder_weights: str | None = None  # local file (e.g. a torchvision ResNet state dict) initialising the encoder

    def cross_checks(self):
        if self.max_features < self.base_features:
            yield "max_features", f"an integer >= model.base_features ({self.base_features})", self.max_features

    def input_divisor(self) -> int | None:
        """What H and W of a ``unet`` input must be multiples of (None for other models: known once built)."""
        return 2 ** (self.n_stages - 1) if self.name == "unet" else None


def _divisible(size_key: str, size: int, model: ModelConfig):
    d = model.input_divisor()
    if d is not None and size % d:
        yield size_key, f"a multiple of {d} for the {model.n_stages}-stage unet (2**(model.n_stages-1))", size


@dataclass
class DataConfig:
    patch_size: int = spec(256, ge=MIN_SIZE)  # training crop (pixels); inference runs on the whole cached slice
    augment: str = spec("paper", choices=AUGMENT_PRESETS)  # paper | nnunet | none
    # device (batched, data.batch_augment) | loader (per sample, workers) | auto
    augment_on: str = spec("auto", choices=AUGMENT_ON)
    phases: list[str] = spec(factory=lambda: list(PHASES), choices=PHASES, nonempty=True)
    batch_size: int = spec(32, ge=1)
    num_workers: int = spec(2, ge=0)
    # cardiac: LV, MYO, RV; lv: binary LV vs background (echo); see data/labels.py TASKS
    task: str = spec("cardiac", choices=TASKS)


@dataclass
class OptimConfig:
    lr: float = spec(0.01, gt=0)
    momentum: float = spec(0.99, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = spec(3e-5, ge=0)
    poly_power: float = spec(0.9, gt=0)
    grad_clip: float = spec(12.0, ge=0)  # nnU-Net's clip norm; 0 disables

    def cross_checks(self):
        if self.nesterov and self.momentum == 0:  # torch.optim.SGD refuses it
            yield "nesterov", "false when momentum is 0 (Nesterov needs momentum)", self.nesterov


@dataclass
class ScheduleConfig:
    epochs: int = spec(1000, ge=1)
    # iterations: iters_per_epoch batches (nnU-Net); pass: one pass over the slices
    epoch_mode: str = spec("iterations", choices=EPOCH_MODES)
    iters_per_epoch: int = spec(250, ge=1)
    val_every: int = spec(1, ge=1)


@dataclass
class FinetuneConfig:
    init: str | None = None  # pretraining run folder or checkpoint
    # all | frozen-encoder | warmup-frozen | multitask (needs a `position` init run)
    strategy: str = spec("all", choices=STRATEGIES)
    warmup_frozen_epochs: int = spec(0, ge=0)
    lr: float = spec(0.005, gt=0)  # paper: fine-tuning lr
    pretext_weight: float = spec(1.0, ge=0)  # multitask: loss = segmentation + pretext_weight * position pretext loss
    allow_partial: bool = False  # accept an init whose weights fill under half of the model's tensors


@dataclass
class SemiConfig:
    """Semi-supervised fine-tuning (``cardiossp.semi``): ``method`` None = labeled slices only."""

    method: str | None = spec(None, choices=SEMI_METHODS)  # mean-teacher | unimatch | bcp | self-training
    options: dict = spec(factory=dict)  # the method's options (see its ``defaults``)
    unlabeled_batch_size: int | None = spec(None, ge=1)  # None: the labeled batch size
    pseudo_labels: str | None = None  # self-training: the folder `cardiossp pseudo-label` wrote

    def cross_checks(self):
        needs = self.method == "self-training"
        if needs and not self.pseudo_labels:
            yield "pseudo_labels", "the folder `cardiossp pseudo-label` wrote, for the self-training method", None
        if self.pseudo_labels and not needs:
            yield "method", "self-training when semi.pseudo_labels is set", self.method


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    # auto: bf16-mixed on CUDA / CPUs with native bf16, 16-mixed on older GPUs, else 32-true
    precision: str = spec("auto", choices=PRECISIONS, coerce=str)
    channels_last: bool = False  # NHWC network and batches (measured 1.02x cpu net, 1.19x paper net on a CPU)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    labeled_subjects: int | None = spec(None, ge=1)  # label budget (N training subjects); None = all
    subset: str | None = None  # a named subset of the split (e.g. vendor_AB)
    devices: int | str = spec("auto", custom=DEVICES)  # per node
    num_nodes: int = spec(1, ge=1)
    accelerator: str = spec("auto", choices=ACCELERATORS)

    def cross_checks(self):
        yield from _divisible("data.patch_size", self.data.patch_size, self.model)
        if self.semi.method == "self-training" and self.data.task != "cardiac":
            yield "data.task", "cardiac for self-training (pseudo-labels are LV, MYO, RV)", self.data.task
        ft = self.finetune
        if ft.strategy == "warmup-frozen" and not 1 <= ft.warmup_frozen_epochs <= self.schedule.epochs:
            yield ("finetune.warmup_frozen_epochs", f"in [1, schedule.epochs = {self.schedule.epochs}] for the "
                   "warmup-frozen strategy", ft.warmup_frozen_epochs)


@dataclass
class PretrainDataConfig:
    input_size: int = spec(256, ge=MIN_SIZE)  # global crop / view size (pixels)
    augment: str = spec("paper", choices=AUGMENT_PRESETS)
    # device (batched views, data.batch_augment) | loader (per sample) | auto
    augment_on: str = spec("auto", choices=AUGMENT_ON)
    batch_size: int = spec(128, ge=1)
    num_workers: int = spec(2, ge=0)


@dataclass
class PretrainOptimConfig:
    lr: float = spec(0.01, gt=0)
    momentum: float = spec(0.99, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = spec(3e-5, ge=0)
    warmup_epochs: int = spec(0, ge=0)  # linear warm-up, then cosine decay to 0
    grad_clip: float = spec(0.0, ge=0)

    cross_checks = OptimConfig.cross_checks


@dataclass
class PretrainConfig:
    """One self-supervised pretraining run (de Mooij et al. 2024, Appendix A). ``method_options`` go to the method
    (see each method's ``defaults``); ``per_method`` sections in a preset are merged in
    for the chosen method only."""

    method: str = spec("mim", choices=SSP_METHODS)
    method_options: dict = spec(factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(epochs=100, epoch_mode="pass"))
    precision: str = spec("auto", choices=PRECISIONS, coerce=str)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    devices: int | str = spec("auto", custom=DEVICES)  # per node
    num_nodes: int = spec(1, ge=1)
    accelerator: str = spec("auto", choices=ACCELERATORS)

    def cross_checks(self):
        yield from _divisible("data.input_size", self.data.input_size, self.model)
        if self.optim.warmup_epochs > self.schedule.epochs:
            yield ("optim.warmup_epochs", f"<= schedule.epochs ({self.schedule.epochs})", self.optim.warmup_epochs)


def from_dict(cls: type[C], data: dict | None, where: str) -> C:
    """Build ``cls`` from a nested mapping (missing keys keep their defaults) and check every value
    (``config_checks.check_config``); a ``ConfigError`` names ``where`` and the dotted key."""
    return check_config(build(cls, data, where), where)


def _set(d: dict, dotted: Any, value: Any, where: str) -> None:
    """``d[a][b] = value`` for ``dotted = "a.b"`` (sections created as needed)."""
    keys = dotted.split(".") if isinstance(dotted, str) else []
    if not keys or not all(k.strip() for k in keys):
        raise ConfigError(f"{where}: {dotted!r} is not a config key (e.g. optim.lr)")
    for i, k in enumerate(keys[:-1]):
        if d.get(k) is None:
            d[k] = {}
        elif not isinstance(d[k], dict):
            raise ConfigError(f"{where}: cannot set {dotted}: {'.'.join(keys[:i + 1])} is a value "
                              f"({d[k]!r}), not a section")
        d = d[k]
    d[keys[-1]] = value


def parse_override(item: str, where: str = "--set") -> tuple[str, Any]:
    """``"optim.lr=0.02"`` -> ``("optim.lr", 0.02)``: the value is read as YAML (``3`` an int, ``abc`` a string)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{where} {item!r} is not key=value (e.g. optim.lr=0.02)")
    key, text = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} {item!r}: the value is not valid YAML ({yaml_problem(e)})") from None


def resolve_preset(kind: str, preset: str | Path) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        if path.parent != Path("."):
            raise ConfigError(f"{path}: {kind} preset file not found")
    path = PRESET_DIR / kind / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml"))
        raise ConfigError(f"unknown {kind} preset {preset!r}; known: {', '.join(known)} (or a .yaml path)")
    return path


def load_config(cls: type[C], kind: str, preset: str | Path | None = None,
                overrides: list[str] | dict | None = None) -> C:
    """Dataclass defaults <- preset YAML <- overrides (``["optim.lr=0.1", ...]`` or a dict of dotted keys),
    every value checked (``from_dict``): a ``ConfigError`` says ``<kind> config: <key> must be ...``."""
    where = f"{kind} config"
    data: dict = {}
    if preset is not None:
        path = resolve_preset(kind, preset)
        data = read_yaml_mapping(path, f"{kind} preset")
        if isinstance(data.get("config"), dict) and "git_sha" in data:  # a run's saved config.yaml
            data = data["config"]
    per_method = data.pop("per_method", None) or {}
    if not isinstance(per_method, dict) or not all(isinstance(v, (dict, type(None))) for v in per_method.values()):
        raise ConfigError(f"{where}: per_method must map method names to config sections (got {per_method!r:.80})")
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            _set(data, k, v, where)
    else:
        for item in overrides or []:
            _set(data, *parse_override(item, "override"), where)
    if per_method and isinstance(data.get("method"), str):
        data = _merge(per_method.get(data["method"]) or {}, data)
    return from_dict(cls, data, where)


def _merge(base: dict, top: dict) -> dict:
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
