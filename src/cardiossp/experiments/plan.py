"""Experiment plans: the paper's studies as one YAML file, expanded into a list of runs.

A plan (``cardiossp/presets/plans/<name>.yaml`` or any path)::

    data: [{reader: acdc, path: ../shared/data/acdc}]      # several sources feed one cache
    cache: {spacing: 1.6, size: 160}
    split: {seed: 0, val: 5, test: 20}                      # budgets are collected from the studies
    domains: {key: vendor, groups: {AB: [A, B], CD: [C, D]}} # training subsets of the domain study
    pretrain: {preset: cpu, seeds: [0], set: {...}}         # once per method (and pretraining seed)
    train: {preset: cpu, set: {...}}
    studies:
      label_budget: {methods: [scratch, mim, pcl], budgets: [5, 10, all], seeds: [0, 1]}
      phase:        {methods: [scratch, mim], budget: all, phases: [ED, ES], seeds: [0]}
      domain:       {methods: [scratch, mim], groups: [AB, CD], seeds: [0]}
      augmentation: {methods: [scratch, mim], budget: all, augment: [paper, none], seeds: [0]}
      convergence:  {methods: [scratch, imagenet, mim], budget: 10, seeds: [0]}
    # a study may also be a list of such specs (e.g. every arm at 5 subjects, two arms at 3 and 10)
    inits: {imagenet: {model.name: resnet_unet, model.encoder_weights: resnet18-imagenet.pth}}
    evaluate: {tta: true, largest_component: true}          # test evaluation (default: neither)

``expand`` turns it into pretraining runs (``pretrain/<method>-s<seed>``) and fine-tuning runs
(``runs/<method>-n<budget>-s<seed>[-<phase>][-aug<augment>][-<group>]``). Runs are identified by
their settings, not by their study: the augmentation study's ``paper`` arm *is* the label-budget
run of the same budget and seed, trained once and counted in both studies (de Mooij et al. 2024 §3).
Methods are ``scratch``, a registered SSP method (pretrained by the plan), or a name in ``inits``:
a start given by config values instead of a pretraining run (e.g. ImageNet weights from a local file, or
``long: {schedule.epochs: 120}``, scratch with a longer schedule: ``long+bcp`` is acdc-few's recipe).
``method:strategy`` fine-tunes with another strategy than ``all`` (``mim:frozen-encoder`` is the paper's
SSL+Decoder, ``position:multitask`` Bai et al.'s SSL+MultiTask); its runs are ``<method>-<strategy>-n...``.
A ``+semi`` suffix fine-tunes semi-supervised (``cardiossp.semi``): ``unimatch`` alone is scratch +
UniMatch, ``mim+unimatch`` UniMatch from the MIM pretraining; runs are ``<method>-n...`` as written.
``<arm>+self-training`` is self-training (ST++) on the pseudo-labels of the run ``<arm>`` (same budget,
seed, phases, subset; trained first, as its own run): ``bcp+self-training`` labels the unlabeled pool
with ``runs/bcp-n5-s0`` (``pseudo/bcp-n5-s0``) and trains a student from the teacher's start on them;
``bcp+self-training+self-training`` is a second round, the first student being the teacher.
The ``convergence`` study (Kalapos & Gyires-Tóth 2022) trains at one budget and compares how fast
validation Dice rises; give it ``train.set: {schedule.val_every: 1}`` for a fine-grained curve.
A fine-tuning run with seed ``s`` starts from the method's pretraining seed ``s`` when the plan
pretrains with that seed, else from its first pretraining seed (the paper pretrains once per method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import PRESET_DIR, PretrainConfig, TrainConfig, load_config
from ..config_checks import read_yaml_mapping
from ..errors import ConfigError
from .plan_schema import SCRATCH, check_plan

SELF_TRAINING = "self-training"
DEFAULT_PHASES = ("ED", "ES")


@dataclass
class RunSpec:
    """One run of a campaign. ``name`` is its folder relative to the campaign folder."""

    kind: str  # "pretrain" | "train"
    name: str
    method: str
    seed: int
    budget: int | None = None  # labeled training subjects; None = all
    phases: tuple[str, ...] = DEFAULT_PHASES
    augment: str | None = None  # augmentation preset (None: the training preset's)
    subset: str | None = None  # domain group (a named subset of the split)
    needs: str | None = None  # the pretraining run a fine-tuning run starts from
    init_set: dict = field(default_factory=dict)  # config values of a named start (plan ``inits``)
    strategy: str | None = None  # fine-tuning strategy (None: the training preset's)
    semi: str | None = None  # semi-supervised method (None: labeled slices only)
    teacher: str | None = None  # self-training: the run whose pseudo-labels the student learns from
    studies: list[str] = field(default_factory=list)
    tta: bool = False  # test evaluation with mirror TTA (plan ``evaluate``)
    largest_component: bool = False  # ... and one connected heart (data.labels.keep_connected_heart)

    @property
    def eval_folder(self) -> str:
        """``eval/<this>`` holds the run's test evaluation: ``test``, ``test-tta-lcc``, ..."""
        from ..evaluate.run import eval_folder_name

        return eval_folder_name("test", self.tta, self.largest_component)

    def overrides(self) -> dict:
        """Config overrides of this run on top of the plan's preset and ``set``."""
        if self.kind == "pretrain":
            return {"method": self.method, "seed": self.seed}
        over = {"seed": self.seed, "labeled_subjects": self.budget, "subset": self.subset,
                "data.phases": list(self.phases)}
        if self.augment is not None:
            over["data.augment"] = self.augment
        if self.strategy is not None:
            over["finetune.strategy"] = self.strategy
        if self.semi is not None:
            over["semi.method"] = self.semi
        if self.teacher is not None:  # relative to the campaign folder; the executor makes it absolute
            over["semi.pseudo_labels"] = pseudo_folder(self.teacher)
        return {**self.init_set, **over}


def pseudo_folder(teacher: str) -> str:
    """Where a campaign keeps the pseudo-labels of teacher run ``runs/<name>``: ``pseudo/<name>``."""
    return "pseudo/" + teacher.removeprefix("runs/")


@dataclass
class Plan:
    name: str
    data: list[dict]
    cache: dict
    split: dict
    pretrain: dict
    train: dict
    studies: dict
    domains: dict = field(default_factory=dict)
    phantom: dict = field(default_factory=dict)
    inits: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    def budgets(self) -> list[int]:
        """Integer label budgets the split must hold (nested)."""
        out = set()
        parts = [p for s in self.studies.values() for p in (s if isinstance(s, list) else [s])]
        for s in parts:
            for b in s.get("budgets", [s.get("budget", "all")]):
                if b != "all":
                    out.add(int(b))
        return sorted(out)


def resolve_plan(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"plan file {p} not found")
        return p
    builtin = PRESET_DIR / "plans" / f"{name_or_path}.yaml"
    if not builtin.is_file():
        known = sorted(f.stem for f in (PRESET_DIR / "plans").glob("*.yaml"))
        raise ConfigError(f"unknown plan {name_or_path!r}; built-in plans: {', '.join(known)}, or give a YAML file")
    return builtin


def load_plan(name_or_path: str | Path, data: dict[str, str] | None = None) -> Plan:
    """Read a plan; ``data`` maps a reader name to a path that replaces the plan's path for it. Every key
    and value is checked first (``check_plan``); a ``ConfigError`` names the plan file and the key."""
    path = resolve_plan(name_or_path)
    raw = {k: v for k, v in read_yaml_mapping(path, "plan").items() if v is not None}
    check_plan(raw, path)
    sources = [dict(s) for s in raw.get("data", [])]
    for reader, p in (data or {}).items():
        match = [s for s in sources if s["reader"] == reader]
        if not match:
            if len(sources) == 1 and reader == "":
                match = sources
            else:
                raise ConfigError(f"plan {path} has no data source read by {reader!r}")
        if not p:
            raise ConfigError(f"--data {reader}=: give the folder of the {reader or 'data'} source")
        for s in match:
            s["path"] = p
    plan = Plan(name=path.stem, data=sources, cache=raw.get("cache", {}), split=raw.get("split", {}),
                pretrain=raw.get("pretrain", {}), train=raw.get("train", {}), studies=raw.get("studies", {}),
                domains=raw.get("domains", {}), phantom=raw.get("phantom", {}), inits=raw.get("inits", {}),
                evaluate=raw.get("evaluate", {}))
    try:  # the presets with the plan's ``set`` blocks and every named start, before any run
        pretrain_config(plan, {})
        for overrides in [{}, *plan.inits.values()]:
            train_config(plan, overrides or {})
    except ConfigError as e:
        raise ConfigError(f"plan {path}: {e}") from None
    return plan


def train_config(plan: Plan, overrides: dict) -> TrainConfig:
    """The plan's training preset + ``train.set`` + ``overrides``."""
    over = {**plan.train.get("set", {}), **overrides}
    return load_config(TrainConfig, "train", plan.train.get("preset", "cpu"), over)


def pretrain_config(plan: Plan, overrides: dict) -> PretrainConfig:
    """The plan's pretraining preset + ``pretrain.set`` + ``overrides`` (method, seed)."""
    return load_config(PretrainConfig, "pretrain", plan.pretrain.get("preset", "cpu"),
                       {**plan.pretrain.get("set", {}), **overrides})


def _budget(b) -> int | None:
    return None if b in ("all", None) else int(b)


def _run_name(method: str, seed: int, budget, phases, augment, subset) -> str:
    name = f"{method.replace(':', '-')}-n{'all' if budget is None else budget}-s{seed}"
    if tuple(phases) != DEFAULT_PHASES:
        name += "-" + "".join(phases)
    if augment is not None:
        name += f"-aug{augment}"
    if subset is not None:
        name += f"-{subset}"
    return f"runs/{name}"


def split_semi(method: str) -> tuple[str, str | None]:
    """``"mim:frozen-encoder+unimatch"`` -> ``("mim:frozen-encoder", "unimatch")``; a bare semi-supervised
    method name starts from scratch (``"bcp"`` -> ``("scratch", "bcp")``); no semi part -> None."""
    from ..semi import SEMI_METHODS

    start, plus, semi = method.rpartition("+")
    if not plus:
        return (SCRATCH, method) if method in SEMI_METHODS else (method, None)
    if semi not in SEMI_METHODS:
        raise ConfigError(f"{method!r}: {semi!r} is not a semi-supervised method; known: "
                          f"{', '.join(SEMI_METHODS.names())}")
    return start, semi


def _arm(plan: Plan, name: str, method: str, seed: int, budget, phases, augment, subset, pre_seeds: list[int],
         evaluation: dict) -> RunSpec:
    """The run of an arm that is not self-training: its start, fine-tuning strategy and semi-supervised
    method. The start is scratch, a pretraining run (``mim``, ``mim:frozen-encoder``), named settings of
    the plan's ``inits`` (``long``), or a pretraining run with named settings (``mim+long``)."""
    start, semi = split_semi(method)
    if semi == SELF_TRAINING:
        raise ConfigError(f"plan {plan.name!r}: {method!r} names no teacher; write <arm>+{SELF_TRAINING}, "
                          f"e.g. bcp+{SELF_TRAINING}")
    parts = start.split("+")
    named = [p for p in parts if p in plan.inits]
    runs = [p for p in parts if p not in plan.inits]
    if len(named) > 1 or len(runs) > 1:
        raise ConfigError(f"plan {plan.name!r}: {method!r} starts from at most one pretraining run and one "
                          f"set of named settings ({', '.join(plan.inits) or 'the plan has none'})")
    pretrained, _, strategy = (runs[0] if runs else SCRATCH).partition(":")
    needs = None
    if pretrained not in (SCRATCH, *plan.inits):
        needs = f"pretrain/{pretrained}-s{seed if seed in pre_seeds else pre_seeds[0]}"
    elif strategy:
        raise ConfigError(f"plan {plan.name!r}: {method!r} has no pretraining run to fine-tune with {strategy!r}")
    init_set = dict(plan.inits[named[0]] or {}) if named else {}
    return RunSpec("train", name, method, seed, budget, tuple(phases), augment, subset, needs, init_set=init_set,
                   strategy=strategy or None, semi=semi, **evaluation)


def expand(plan: Plan, studies: list[str] | None = None) -> list[RunSpec]:
    """Every run of ``plan`` (optionally of some studies only): pretraining runs first."""
    chosen = {k: v for k, v in plan.studies.items() if studies is None or k in studies}
    if studies is not None and (missing := sorted(set(studies) - set(plan.studies))):
        raise ConfigError(f"plan {plan.name!r} has no study {missing}; it has {sorted(plan.studies)}")
    pre_seeds = [int(s) for s in plan.pretrain.get("seeds", [0])]
    train_runs: dict[str, RunSpec] = {}

    default_aug = train_config(plan, {}).data.augment

    def add(study: str, method: str, seed: int, budget=None, phases=DEFAULT_PHASES, augment=None, subset=None) -> str:
        augment = augment or default_aug
        name = _run_name(method, seed, budget, phases, None if augment == default_aug else augment, subset)
        if name not in train_runs:
            evaluation = {"tta": bool(plan.evaluate.get("tta", False)),
                          "largest_component": bool(plan.evaluate.get("largest_component", False))}
            teacher_arm, plus, last = method.rpartition("+")
            if plus and last == SELF_TRAINING:  # the teacher is a run of its own, trained first
                if not teacher_arm:
                    raise ConfigError(f"plan {plan.name!r}: {method!r} needs a teacher arm before +{SELF_TRAINING}")
                teacher = train_runs[add(study, teacher_arm, seed, budget, phases, augment, subset)]
                # the student starts where its teacher started (scratch, a pretraining run or a named init)
                train_runs[name] = RunSpec("train", name, method, seed, budget, tuple(phases), augment, subset,
                                           teacher.needs, init_set=dict(teacher.init_set), strategy=teacher.strategy,
                                           semi=SELF_TRAINING, teacher=teacher.name, **evaluation)
            else:
                train_runs[name] = _arm(plan, name, method, seed, budget, phases, augment, subset, pre_seeds,
                                        evaluation)
        if study not in train_runs[name].studies:
            train_runs[name].studies.append(study)
        return name

    parts = [(study, part) for study, spec in chosen.items() for part in (spec if isinstance(spec, list) else [spec])]
    for study, s in parts:
        methods, seeds = s.get("methods", [SCRATCH]), [int(x) for x in s.get("seeds", [0])]
        for method in methods:
            for seed in seeds:
                if study == "convergence":
                    add(study, method, seed, _budget(s.get("budget")))
                elif study == "label_budget":
                    for b in s.get("budgets", ["all"]):
                        add(study, method, seed, _budget(b))
                elif study == "phase":
                    for ph in s.get("phases", ["ED", "ES"]):
                        add(study, method, seed, _budget(s.get("budget")), phases=(ph,))
                elif study == "domain":
                    groups = s.get("groups") or list(plan.domains.get("groups", {}))
                    if not groups:
                        raise ConfigError(f"plan {plan.name!r}: the domain study needs domains.groups")
                    for g in groups:
                        if g not in plan.domains.get("groups", {}):
                            raise ConfigError(f"plan {plan.name!r}: domain group {g!r} not in domains.groups")
                        add(study, method, seed, _budget(s.get("budget")), subset=g)
                elif study == "augmentation":
                    for aug in s.get("augment", ["paper", "none"]):
                        add(study, method, seed, _budget(s.get("budget")), augment=aug)
    needed = sorted({r.needs for r in train_runs.values() if r.needs})
    pre = []
    for name in needed:
        method, seed = name.removeprefix("pretrain/").rsplit("-s", 1)
        pre.append(RunSpec("pretrain", name, method, int(seed)))
    return pre + list(train_runs.values())
