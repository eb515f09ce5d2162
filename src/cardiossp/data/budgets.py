"""Label budgets, and the subjects of a split (``data.splits``) that training and pretraining may use.

A budget is a number of training patients (``10``), a fraction of them (``0.05`` or ``"5%"``) or
``"all"``. A split stores the budgets it was made with, nested (each a prefix of one stratified order
of its training patients). A budget it does not store (``train --labeled-subjects 3`` on a split made
with ``--budgets 2,5``) is drawn with the split's seed and kept **nested with the stored ones**: it holds
the largest stored budget below it and lies inside the smallest one above it, so a larger budget still
only adds labels. Such a draw counts subjects, not patients, and is not stratified; make the split
with the budget (``cardiossp split --budgets``) to have both.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def parse_budget(value) -> int | float | str:
    """``10`` -> 10 patients; ``0.05`` / ``"5%"`` -> the fraction 0.05; ``"all"`` -> ``"all"``."""
    text = str(value).strip().lower()
    try:
        if text == "all":
            return "all"
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"label budget {value!r} is not a number, a fraction, a percentage or 'all'") from None
    if number >= 1 and number == int(number) and not text.endswith("%"):
        return int(number)
    if not 0 < number <= 1:
        raise ConfigError(f"label budget {value!r}: give a fraction in (0, 1), a percentage, or a whole number >= 1")
    return number


def parse_budgets(text: str) -> list[int | float | str]:
    """Comma-separated budgets, e.g. ``"0.05,10,all"`` (CLI ``--budgets``)."""
    return [parse_budget(b) for b in text.split(",") if b.strip()]


def budget_size(budget, n_train: int) -> int:
    """Patients in ``budget`` (a count, a fraction of ``n_train``, or ``all``)."""
    b = parse_budget(budget)
    if b == "all":
        return n_train
    if isinstance(b, float):
        return max(1, int(np.floor(b * n_train + 0.5)))
    return b


def training_subjects(split: dict, budget: float | str | None = None, subset: str | None = None) -> list[str]:
    """Labeled training subjects for a budget (N patients, a fraction such as 0.05 / "5%", or "all")
    and/or a named subset. A fraction the split was made with reads its stored budget; one it was not
    made with is drawn nested with the stored budgets (module docstring)."""
    ids = split["train"]
    if subset is not None:
        if subset not in split["subsets"]:
            raise ConfigError(f"split has no subset {subset!r}; it has {sorted(split['subsets'])}")
        ids = split["subsets"][subset]
    if budget is None:
        return list(ids)
    b = parse_budget(budget)
    if b == "all":
        return list(ids)
    if isinstance(b, float) and subset is None and b in split.get("budget_fractions", {}):
        b = split["budget_fractions"][b]
    if b in split["budgets"] and subset is None:
        return split["budgets"][b]
    n = budget_size(b, len(ids))
    if n > len(ids):
        raise ConfigError(f"label budget {budget} exceeds the {len(ids)} available training subjects")
    return _nested_draw(ids, {} if subset is not None else split["budgets"], n, split.get("seed", 0))


def _nested_draw(ids: list[str], stored: dict[int, list[str]], n: int, seed: int) -> list[str]:
    """``n`` of ``ids``: the largest stored budget of at most ``n`` subjects, topped up with a seeded draw
    from the smallest stored budget of more than ``n`` subjects (or from all of ``ids``)."""
    below = max((v for v in stored.values() if len(v) <= n), key=len, default=[])
    above = min((v for v in stored.values() if len(v) > n), key=len, default=ids)
    rest = [s for s in above if s not in set(below)]
    rng = np.random.default_rng(seed)
    return sorted(list(below) + rng.permutation(rest)[: n - len(below)].tolist())


def pretraining_subjects(split: dict) -> list[str]:
    """Subjects whose every frame pretraining may use: training plus unlabeled, never val/test."""
    return sorted(set(split["train"]) | set(split["unlabeled"]))
