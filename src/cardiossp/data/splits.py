"""Subject-level splits, label budgets and subsets, stored as readable YAML files.

A split file::

    seed: 0
    stratify: vendor
    train: [acdc_patient001, ...]        # labeled subjects for supervised training
    val: [...]
    test: [...]
    unlabeled: [...]                     # subjects without any label map (pretraining only)
    other_views: [...]                   # long-axis subjects: not in short-axis train/val/test
    budgets: {5: [...], 10: [...]}       # labeled training subsets of N subjects (nested, stratified)
    subsets: {vendor_AB: [...], vendor_CD: [...]}   # named subsets of train

Pretraining uses ``train + unlabeled`` (never val or test). Budgets are nested (the 10
subjects of budget 10 contain the 5 of budget 5) so that a larger budget only adds labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import ConfigError, DataError


def _strata(subjects: pd.DataFrame, stratify: str) -> pd.Series:
    if stratify == "auto":
        stratify = "vendor" if subjects["vendor"].nunique() > 1 else "pathology"
    if stratify == "none":
        return pd.Series("all", index=subjects.index)
    if stratify not in subjects:
        raise ConfigError(f"cannot stratify by {stratify!r}; choose vendor, pathology, dataset or none")
    return subjects[stratify].fillna("unknown").astype(str)


def stratified_order(ids: list[str], strata: list[str], rng: np.random.Generator) -> list[str]:
    """A random order of ``ids`` in which every prefix holds the strata in proportion (round-robin)."""
    groups: dict[str, list[str]] = {}
    for i, s in zip(ids, strata):
        groups.setdefault(s, []).append(i)
    queues = {s: list(rng.permutation(g)) for s, g in sorted(groups.items())}
    n = len(ids)
    # Interleave by each group's ideal fractional positions (largest-remainder style).
    keyed = []
    for s, q in queues.items():
        for k, item in enumerate(q):
            keyed.append(((k + rng.uniform(0.25, 0.75)) / len(q), s, item))
    keyed.sort()
    return [str(item) for _, _, item in keyed][:n]


def make_split(
    subjects: pd.DataFrame,
    seed: int = 0,
    val: float | int = 0.15,
    test: float | int = 0.2,
    budgets: list[int] | None = None,
    stratify: str = "auto",
    vendor_groups: dict[str, list[str]] | None = None,
) -> dict:
    """Split the subjects table of a cache (``SliceCache.subjects``) into train / val / test."""
    views = subjects["view"].fillna("SA") if "view" in subjects else pd.Series("SA", index=subjects.index)
    short_axis = (views == "SA").to_numpy()
    labeled = subjects[short_axis & (subjects["labeled_frames"] > 0).to_numpy()].reset_index(drop=True)
    unlabeled = subjects[short_axis & (subjects["labeled_frames"] == 0).to_numpy()]["subject"].tolist()
    other_views = subjects[~short_axis]["subject"].tolist()
    n = len(labeled)
    n_test = int(round(test * n)) if isinstance(test, float) and test < 1 else int(test)
    n_val = int(round(val * n)) if isinstance(val, float) and val < 1 else int(val)
    if n_test + n_val >= n:
        raise ConfigError(f"{n} labeled subjects cannot give {n_val} val + {n_test} test and leave any for training")
    rng = np.random.default_rng(seed)
    if stratify == "auto":
        stratify = "vendor" if labeled["vendor"].nunique() > 1 else "pathology"
    strata = _strata(labeled, stratify)
    order = stratified_order(labeled["subject"].tolist(), strata.tolist(), rng)
    test_ids, val_ids, train_ids = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    strat_of = dict(zip(labeled["subject"], strata))
    train_order = stratified_order(train_ids, [strat_of[i] for i in train_ids], rng)
    out = {
        "seed": seed,
        "stratify": stratify,
        "train": sorted(train_ids),
        "val": sorted(val_ids),
        "test": sorted(test_ids),
        "unlabeled": sorted(unlabeled),
        "other_views": sorted(other_views),  # long-axis etc.: kept out of short-axis training and testing
        "budgets": {},
        "subsets": {},
    }
    for b in sorted(budgets or []):
        if b > len(train_ids):
            raise ConfigError(f"label budget {b} exceeds the {len(train_ids)} training subjects")
        out["budgets"][int(b)] = sorted(train_order[:b])
    vendor_of = dict(zip(labeled["subject"], labeled["vendor"].fillna("unknown").astype(str)))
    for name, vendors in (vendor_groups or {}).items():
        out["subsets"][name] = sorted(i for i in train_ids if vendor_of[i] in vendors)
    return out


def save_split(split: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(split, sort_keys=False))
    tmp.replace(path)
    return path


def load_split(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file not found")
    try:
        split = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML: {e}") from None
    missing = [k for k in ("train", "val", "test") if k not in (split or {})]
    if missing:
        raise DataError(path, f"split file lacks {missing}")
    split.setdefault("unlabeled", [])
    split.setdefault("other_views", [])
    split.setdefault("budgets", {})
    split.setdefault("subsets", {})
    split["budgets"] = {int(k): v for k, v in split["budgets"].items()}
    return split


def training_subjects(split: dict, budget: int | None = None, subset: str | None = None) -> list[str]:
    """Labeled training subjects for a budget (N subjects) and/or a named subset."""
    ids = split["train"]
    if subset is not None:
        if subset not in split["subsets"]:
            raise ConfigError(f"split has no subset {subset!r}; it has {sorted(split['subsets'])}")
        ids = split["subsets"][subset]
    if budget is not None:
        if budget in split["budgets"] and subset is None:
            return split["budgets"][budget]
        if budget > len(ids):
            raise ConfigError(f"label budget {budget} exceeds the {len(ids)} available training subjects")
        rng = np.random.default_rng(split.get("seed", 0))
        return sorted(rng.permutation(ids)[:budget].tolist())
    return list(ids)


def pretraining_subjects(split: dict) -> list[str]:
    """Subjects whose every frame pretraining may use: training plus unlabeled, never val/test."""
    return sorted(set(split["train"]) | set(split["unlabeled"]))
