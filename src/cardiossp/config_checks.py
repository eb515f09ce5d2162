"""Rules of config values, declared next to each dataclass field, and the one check that applies them.

A field declares its rule with :func:`spec` (``epochs: int = spec(1000, ge=1)``): its type comes from
the annotation, the rule adds bounds (``ge``/``gt``/``le``/``lt``), ``choices`` (for a list field: of
every item), ``nonempty`` or a ``custom`` predicate. Choices owned by another module (the fine-tuning
strategies, the model / method registries) are named lazily with :class:`Names` and looked up at check
time, so this module imports nothing heavy and creates no import cycle. A dataclass may add rules that
involve several fields in a ``cross_checks()`` method yielding ``(dotted key, allowed, value)``.

:func:`check_config` walks a built config and raises one ``ConfigError`` line naming every bad value's
full dotted key, what is allowed and what was given: ``train config: schedule.epochs must be an integer
>= 1 (got -1)``. ``config.from_dict`` (hence ``load_config``: presets, ``--set``, plan ``set:`` blocks,
a saved ``config.yaml``) runs it; :func:`check_option` checks a command-line option the same way.

Types: an ``int`` field takes ints only (not bools, not strings), a ``float`` field ints and floats
(finite), ``int | str`` both, ``X | None`` also None, ``list[str]`` a list (or tuple) of strings,
``dict`` a mapping.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml

from .errors import ConfigError

C = TypeVar("C")


@dataclass(frozen=True)
class Names:
    """Choices owned by another module, looked up when a value is checked: a tuple or dict (its keys),
    or a registry (its ``names()``), at ``module.attr``."""

    module: str
    attr: str

    def resolve(self) -> tuple[str, ...]:
        obj = getattr(importlib.import_module(self.module), self.attr)
        return tuple(obj.names() if hasattr(obj, "names") else obj)


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy beyond its annotated type (None: no such rule)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | Names | None = None  # allowed values (of every item, for a list field)
    nonempty: bool = False  # a list / dict field must not be empty
    custom: tuple[Callable[[Any], bool], str] | None = None  # (predicate, what is allowed)
    coerce: Callable[[Any], Any] | None = None  # applied by from_dict to a value of another type (32 -> "32")


def spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with a default (or a ``factory``) and its :class:`Rule`."""
    return field(default=default, default_factory=factory, metadata={"rule": Rule(**rule)})


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule", Rule())


@lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ------------------------------------------------------------------ types


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union (``int | None`` -> (int, NoneType)), else (tp,)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def type_ok(value: Any, tp: Any) -> bool:
    """``value`` is of the annotated type ``tp`` (bool is not an int; a float must be finite)."""
    if len(members := _members(tp)) > 1:
        return any(type_ok(value, m) for m in members)
    origin = typing.get_origin(tp) or tp
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(type_ok(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        args = typing.get_args(tp)
        items = " or ".join(_type_word(m).split(" ", 1)[-1] + "s" for m in _members(args[0])) if args else ""
        return f"a list of {items}" if items else "a list"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bounds(rule: Rule) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``; '' without bounds."""
    lo = f"[{_num(rule.ge)}" if rule.ge is not None else f"({_num(rule.gt)}" if rule.gt is not None else None
    hi = f"{_num(rule.le)}]" if rule.le is not None else f"{_num(rule.lt)})" if rule.lt is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if rule.ge is not None else "> ") + lo[1:]
    if hi:
        return ("<= " if rule.le is not None else "< ") + hi[:-1]
    return ""


def allowed(tp: Any, rule: Rule) -> str:
    """What a field accepts, in words: ``an integer >= 1``, ``one of paper, nnunet, none``, ``null or ...``."""
    members = [m for m in _members(tp) if m is not type(None)]
    optional = len(members) < len(_members(tp))
    choices = _choices(rule)
    if rule.custom is not None:
        text = rule.custom[1]
    elif choices is not None and all(typing.get_origin(m) is not list for m in members):
        text = "one of " + ", ".join(map(str, choices))
    else:
        words = " or ".join(_type_word(m) for m in members)
        if rule.nonempty:
            words = words.replace("a list", "a non-empty list").replace("a mapping", "a non-empty mapping")
        if choices is not None:  # a list field: choices of its items
            words = f"{words.split(' of ')[0]} of {', '.join(map(str, choices))}"
        text = f"{words} {_bounds(rule)}".rstrip()
    return f"{text} or null" if optional else text


def _choices(rule: Rule) -> tuple | None:
    if rule.choices is None:
        return None
    return rule.choices.resolve() if isinstance(rule.choices, Names) else tuple(rule.choices)


def value_ok(value: Any, tp: Any, rule: Rule) -> bool:
    """``value`` has the type ``tp`` and meets ``rule`` (bounds and choices apply to every item of a list)."""
    if not type_ok(value, tp):
        return False
    if value is None:
        return True
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_bounds(v, rule):
            return False
    if rule.nonempty and isinstance(value, (list, tuple, dict)) and not value:
        return False
    choices = _choices(rule)
    if choices is not None and any(v not in choices for v in items):
        return False
    return rule.custom is None or bool(rule.custom[0](value))


def _in_bounds(v: float, rule: Rule) -> bool:
    return not ((rule.ge is not None and not v >= rule.ge) or (rule.gt is not None and not v > rule.gt)
                or (rule.le is not None and not v <= rule.le) or (rule.lt is not None and not v < rule.lt))


# ------------------------------------------------------------------ checks


def problems(cfg: Any, prefix: str = "") -> list[str]:
    """``"<key> must be <allowed> (got <value>)"`` for every bad value of the dataclass ``cfg`` (recursive);
    its ``cross_checks()`` run only when every field of it is fine on its own."""
    out: list[str] = []
    hints = type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value, tp = prefix + f.name, getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += problems(value, key + ".") if isinstance(value, tp) else [f"{key} must be a mapping (got {value!r})"]
        elif not value_ok(value, tp, _without_lookup(rule_of(f)) if _is_default(f, value) else rule_of(f)):
            out.append(f"{key} must be {allowed(tp, rule_of(f))} (got {value!r})")
    if not out and hasattr(cfg, "cross_checks"):
        out += [f"{prefix}{key} must be {what} (got {value!r})" for key, what, value in cfg.cross_checks()]
    return out


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return default is not dataclasses.MISSING and type(value) is type(default) and value == default


def _without_lookup(rule: Rule) -> Rule:
    """A field's own default needs no import of the module owning its choices (every default is tested valid):
    loading a checkpoint's config in ``predict`` must not import Lightning for ``finetune.strategy: all``."""
    return dataclasses.replace(rule, choices=None) if isinstance(rule.choices, Names) else rule


def check_config(cfg: Any, where: str) -> Any:
    """Raise one ``ConfigError`` line ``<where>: <problem>; <problem>`` if any value of ``cfg`` is bad;
    else return ``cfg``."""
    found = problems(cfg)
    if found:
        raise ConfigError(f"{where}: " + "; ".join(found))
    return cfg


def normalise(value: Any, tp: Any, rule: Rule) -> Any:
    """The value ``from_dict`` stores: ``rule.coerce`` applied to a value not of the field's type, and an
    int given for a pure ``float`` field made a float."""
    if rule.coerce is not None and value is not None and not type_ok(value, tp) and not isinstance(value, bool):
        try:
            return rule.coerce(value)
        except (TypeError, ValueError):
            return value
    if tp is float and type_ok(value, float):
        return float(value)
    return value


# ------------------------------------------------------------------ building and reading


def build(cls: type[C], data: dict | None, where: str, prefix: str = "", base: C | None = None) -> C:
    """The dataclass ``cls`` from a nested mapping, values not yet checked: ``base`` (a section's own default,
    e.g. PretrainConfig's pass-mode schedule, else ``cls()``) with ``data`` on top; unknown keys are refused."""
    if data is None:
        return base if base is not None else cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping (got {data!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        section = f" of {prefix.rstrip('.')}" if prefix else ""
        hint = _did_you_mean(str(unknown[0]), fields) if len(unknown) == 1 else ""
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} "
                          f"{', '.join(prefix + str(k) for k in unknown)}{hint}; keys{section}: {', '.join(fields)}")
    hints = type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        f, tp = fields[name], hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, where, f"{prefix}{name}.", f.default_factory())  # type: ignore[misc]
        else:
            kwargs[name] = normalise(value, tp, rule_of(f))
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def yaml_problem(e: Exception) -> str:
    """``line 3, column 7: <problem>`` of a YAML parse error."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The mapping a YAML file holds ({} for an empty file); a ``ConfigError`` naming the file otherwise."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {what} is not valid YAML ({yaml_problem(e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not a text (YAML) file") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: {what} must be a mapping of keys to values (got {type(doc).__name__} {doc!r:.60})")
    return doc


def check_option(name: str, value: Any, tp: Any = int, **rule: Any) -> Any:
    """A command-line option's value checked like a config field: ``--size must be an integer >= 16 (got 0)``."""
    r = Rule(**rule)
    if not value_ok(value, tp, r):
        raise ConfigError(f"{name} must be {allowed(tp, r)} (got {value!r})")
    return value


def _did_you_mean(unknown: str, known: Iterable[str]) -> str:
    """`` (did you mean 'epochs'?)`` for a near miss, else ''."""
    import difflib

    close = difflib.get_close_matches(unknown, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
