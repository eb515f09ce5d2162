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
a start given by config values instead of a pretraining run (e.g. ImageNet weights from a local file).
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

from ..config import AUGMENT_PRESETS, MAX_SEED, MIN_SIZE, PHASES, PRESET_DIR, PretrainConfig, TrainConfig, load_config
from ..config_checks import build, problems, read_yaml_mapping, spec
from ..errors import CardiosspError, ConfigError

SCRATCH = "scratch"
SELF_TRAINING = "self-training"
DEFAULT_PHASES = ("ED", "ES")

# ---- what a plan file may hold, checked by load_plan with config_checks (like a run config)


def _budget_ok(b) -> bool:
    return b == "all" or (type(b) is int and b >= 1)


_BUDGET = (_budget_ok, "a whole number of subjects >= 1 or 'all'")
_BUDGETS = (lambda bs: all(map(_budget_ok, bs)), "a non-empty list of whole numbers of subjects >= 1 or 'all'")
_PART = (lambda v: 0 <= v < 1 or (v >= 1 and v == int(v)), "a fraction in [0, 1) or a whole number of subjects")


@dataclass
class _Source:
    reader: str = None  # type: ignore[assignment]  (None: missing, refused)
    path: str = None  # type: ignore[assignment]


@dataclass
class _Cache:
    spacing: float | None = spec(None, gt=0)  # None: the runner's default
    size: int | None = spec(None, ge=MIN_SIZE)


@dataclass
class _Split:
    seed: int = spec(0, ge=0, le=MAX_SEED)
    val: float = spec(0.15, custom=_PART)
    test: float = spec(0.2, custom=_PART)
    stratify: str = "auto"


@dataclass
class _Pretrain:
    preset: str = "cpu"
    seeds: list[int] = spec(factory=lambda: [0], nonempty=True, ge=0, le=MAX_SEED)
    set: dict = spec(factory=dict)


@dataclass
class _Train:
    preset: str = "cpu"
    set: dict = spec(factory=dict)


@dataclass
class _Evaluate:
    tta: bool = False
    largest_component: bool = False


@dataclass
class _Domains:
    key: str = "vendor"
    groups: dict = spec(factory=dict, custom=(lambda g: all(isinstance(v, list) for v in g.values()),
                                              "a mapping of group names to lists of values"))


@dataclass
class _Study:
    """Every key a study spec may hold (``STUDY_KEYS``: which study takes which, besides methods and seeds)."""

    methods: list[str] = spec(factory=lambda: [SCRATCH], nonempty=True)
    seeds: list[int] = spec(factory=lambda: [0], nonempty=True, ge=0, le=MAX_SEED)
    budgets: list[int | str] = spec(factory=lambda: ["all"], nonempty=True, custom=_BUDGETS)
    budget: int | str | None = spec(None, custom=_BUDGET)
    phases: list[str] = spec(factory=lambda: list(PHASES), nonempty=True, choices=PHASES)
    groups: list[str] | None = None
    augment: list[str] = spec(factory=lambda: ["paper", "none"], nonempty=True, choices=AUGMENT_PRESETS)


SECTIONS = {"cache": _Cache, "split": _Split, "pretrain": _Pretrain, "train": _Train, "domains": _Domains,
            "evaluate": _Evaluate}
STUDY_KEYS = {"label_budget": ("budgets",), "phase": ("budget", "phases"), "domain": ("budget", "groups"),
              "augmentation": ("budget", "augment"), "convergence": ("budget",)}
STUDIES = tuple(STUDY_KEYS)


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
    largest_component: bool = False  # ... and the largest connected component per class

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


def check_plan(raw: dict, path: Path) -> None:
    """Every section of a plan file against its schema above: one ``ConfigError`` listing each problem."""
    where = f"plan {path}"
    sections = {"data", "studies", "phantom", "inits", *SECTIONS}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; sections: {', '.join(sorted(sections))}")
    found: list[str] = []
    for name, schema in SECTIONS.items():
        if name in raw:
            found += problems(build(schema, raw[name], where, f"{name}."), f"{name}.")
    sources = raw.get("data")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{where}: data must be a non-empty list of {{reader: ..., path: ...}} (got {sources!r})"
                          if sources is not None else f"{where}: no data sources")
    for i, s in enumerate(sources):
        found += problems(build(_Source, s, where, f"data[{i}]."), f"data[{i}].")
    studies = raw.get("studies", {})
    if not isinstance(studies, dict):
        raise ConfigError(f"{where}: studies must be a mapping of study names to specs (got {studies!r})")
    bad = sorted(set(studies) - set(STUDIES))
    if bad:
        raise ConfigError(f"{where}: unknown study(ies) {bad}; studies are {', '.join(STUDIES)}")
    for study, spec_ in studies.items():
        parts = spec_ if isinstance(spec_, list) else [spec_]
        for j, part in enumerate(parts):
            key = f"studies.{study}" + (f"[{j}]" if isinstance(spec_, list) else "")
            takes = ("methods", "seeds", *STUDY_KEYS[study])
            if isinstance(part, dict) and (extra := [k for k in part if k not in takes]):
                found.append(f"{key} takes no key(s) {', '.join(map(str, extra))}; its keys: {', '.join(takes)}")
                continue
            found += problems(build(_Study, part, where, f"{key}."), f"{key}.")
    inits = raw.get("inits", {})
    if not isinstance(inits, dict) or not all(isinstance(v, (dict, type(None))) for v in inits.values()):
        found.append(f"inits must map start names to mappings of config values (got {inits!r})")
    if "phantom" in raw:
        found += _phantom_problems(raw["phantom"])
    if found:
        raise ConfigError(f"{where}: " + "; ".join(found))


def _phantom_problems(phantom) -> list[str]:
    from ..data.readers.phantom import check_phantom_config

    if not isinstance(phantom, dict):
        return [f"phantom must be a mapping (got {phantom!r})"]
    try:
        check_phantom_config(dict(phantom))
    except CardiosspError as e:
        return [f"phantom: {getattr(e, 'problem', e)}"]
    return []


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
    """The run of an arm that is not self-training: its start (scratch, pretraining run, named init),
    fine-tuning strategy and semi-supervised method."""
    start, semi = split_semi(method)
    if semi == SELF_TRAINING:
        raise ConfigError(f"plan {plan.name!r}: {method!r} names no teacher; write <arm>+{SELF_TRAINING}, "
                          f"e.g. bcp+{SELF_TRAINING}")
    start, _, strategy = start.partition(":")
    needs = None
    if start != SCRATCH and start not in plan.inits:
        needs = f"pretrain/{start}-s{seed if seed in pre_seeds else pre_seeds[0]}"
    elif strategy:
        raise ConfigError(f"plan {plan.name!r}: {method!r} has no pretraining run to fine-tune with {strategy!r}")
    return RunSpec("train", name, method, seed, budget, tuple(phases), augment, subset, needs,
                   init_set=dict(plan.inits.get(start) or {}), strategy=strategy or None, semi=semi, **evaluation)


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
