"""What a plan file may hold, checked by ``load_plan`` with ``config_checks`` (like a run config):
one schema per section, the study keys each study takes, and ``check_plan``, which lists every problem
of a plan file in one ``ConfigError``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import AUGMENT_PRESETS, MAX_SEED, MIN_SIZE, PHASES
from ..config_checks import build, problems, spec
from ..errors import CardiosspError, ConfigError

SCRATCH = "scratch"


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
