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

Budgets are given as a number of training patients (``10``), a fraction of them (``0.05`` or
``5%``: "fine-tuned on 5% of the labels", Saeed et al. 2022) or ``all``. A fraction resolves to
``max(1, round(f x n_train))`` patients when the split is made and is stored both as that
integer budget and in ``budget_fractions: {0.05: N}``, so every budget stays nested. Reading a
budget (stored or not) and the subjects pretraining may use: ``data.budgets``.

Units are patients: subjects sharing a ``patient`` (subjects table column, e.g. CAMUS's 2CH
and 4CH sequences of one patient) always land in the same part and budget; without that
column each subject is its own patient. Views: by default short-axis (``SA``) subjects are
split and other views go to ``other_views``; a cache without SA subjects (echo: 2CH, 4CH)
splits all its views. ``official=True`` keeps a dataset's own train/val/test assignment
(``official_split`` column, EchoNet-Dynamic's ``Split``).

A fixed test set (``test_subjects``; CLI ``split --test-from READER=PATH`` for every subject that reader
finds at PATH, e.g. ACDC's official ``testing/`` folder prepared into the same cache, or ``--test-list
FILE``, one subject per line; both resolved to subject keys by ``data.holdout``): exactly those subjects
are the test set, the other labeled patients are split into train / val (``val`` is then a fraction of
them, or a number), and the split file says where the test set came from (``fixed_test``). A listed
subject without labels cannot be scored and is refused; one of a view not split (long axis) stays in
``other_views``, which nothing trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..atomic import write_yaml
from ..errors import ConfigError, DataError
from .budgets import budget_size, parse_budget


def require_metadata(subjects: pd.DataFrame, column: str, ids, why: str) -> None:
    """Fail when ``column`` (vendor, centre, ...) is unknown for any of the subjects ``ids``: a split or
    subset that needs it would silently leave them out. The error names the subjects and, from the
    cache's ``metadata_missing`` column, the info CSV that should have given it."""
    if column not in subjects:
        raise DataError(None, f"{why} needs the {column!r} of every subject; the cache has no {column!r} column")
    rows = subjects[subjects["subject"].astype(str).isin({str(i) for i in ids})]
    values = rows[column].astype(object)
    bad = rows[(values.isna() | values.astype(str).str.strip().isin(["", "nan", "None"])).to_numpy()]
    if len(bad) == 0:
        return
    names = ", ".join(map(str, bad["subject"].head(8))) + (", ..." if len(bad) > 8 else "")
    why_missing = ""
    if "metadata_missing" in bad:
        reasons = sorted({str(r) for r in bad["metadata_missing"].dropna()})
        why_missing = f" ({reasons[0]})" if reasons else ""
    raise DataError(None, f"{why} needs the {column} of every subject, but it is unknown for {len(bad)} of "
                          f"{len(rows)}: {names}{why_missing}")


def _strata(subjects: pd.DataFrame, stratify: str) -> pd.Series:
    if stratify == "auto":
        stratify = "vendor" if subjects["vendor"].nunique() > 1 else "pathology"
    if stratify == "none":
        return pd.Series("all", index=subjects.index)
    if stratify not in subjects:
        raise ConfigError(f"cannot stratify by {stratify!r}; choose vendor, pathology, dataset or none")
    return subjects[stratify].astype(object).fillna("unknown").astype(str)


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


def _groups(labeled: pd.DataFrame) -> pd.Series:
    """Patient of each labeled subject (``dataset:patient``), or the subject itself."""
    if "patient" not in labeled:
        return labeled["subject"].astype(str)
    patient = labeled["patient"].where(labeled["patient"].notna(), labeled["subject"]).astype(str)
    dataset = labeled["dataset"].astype(str) if "dataset" in labeled else ""
    return dataset + ":" + patient


def make_split(
    subjects: pd.DataFrame,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.2,
    budgets: list[int | float | str] | None = None,
    stratify: str = "auto",
    vendor_groups: dict[str, list[str]] | None = None,
    views: list[str] | None = None,
    official: bool = False,
    test_subjects: list[str] | None = None,
    test_source: list[str] | None = None,
) -> dict:
    """Split the subjects table of a cache (``SliceCache.subjects``) into train / val / test (by patient).

    ``test_subjects``: subject keys that are the test set (see the module docstring); ``test_source``
    describes where they came from (stored as ``fixed_test``)."""
    subj_views = subjects["view"].fillna("SA") if "view" in subjects else pd.Series("SA", index=subjects.index)
    if views is None:
        views = ["SA"] if (subj_views == "SA").any() else sorted(subj_views.unique())
    in_views = subj_views.isin(list(views)).to_numpy()
    labeled = subjects[in_views & (subjects["labeled_frames"] > 0).to_numpy()].reset_index(drop=True)
    unlabeled = subjects[in_views & (subjects["labeled_frames"] == 0).to_numpy()]["subject"].tolist()
    other_views = subjects[~in_views]["subject"].tolist()
    group = _groups(labeled)
    members: dict[str, list[str]] = {}
    for g, sid in zip(group, labeled["subject"]):
        members.setdefault(g, []).append(str(sid))
    is_first = ~group.duplicated()
    first = labeled[is_first.to_numpy()].set_index(group[is_first].to_numpy())  # one row per patient
    ids = list(members)  # patients, in table order
    n = len(ids)
    rng = np.random.default_rng(seed)
    explicit = stratify
    if stratify == "auto":
        stratify = "vendor" if labeled["vendor"].nunique() > 1 else "pathology"
    elif stratify in ("vendor", "centre", "pathology"):
        require_metadata(labeled, stratify, labeled["subject"], f"--stratify {explicit}")
    if vendor_groups:
        require_metadata(labeled, "vendor", labeled["subject"], "vendor groups (--vendor-groups)")
    strata = _strata(first, stratify)
    strat_of = dict(zip(ids, strata))
    if test_subjects is not None:
        if official:
            raise ConfigError("a fixed test set (--test-from / --test-list) cannot be combined with official=True")
        test_ids, val_ids, train_ids = _fixed_test_parts(subjects, unlabeled, members, test_subjects, val,
                                                         strat_of, rng)
    elif official:
        test_ids, val_ids, train_ids = _official_parts(first)
    else:
        n_test = round(test * n) if isinstance(test, float) and test < 1 else int(test)
        n_val = round(val * n) if isinstance(val, float) and val < 1 else int(val)
        if n_test + n_val >= n:
            raise ConfigError(
                f"{n} labeled patients cannot give {n_val} val + {n_test} test and leave any for training"
            )
        order = stratified_order(ids, strata.tolist(), rng)
        test_ids, val_ids, train_ids = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    train_order = stratified_order(train_ids, [strat_of[i] for i in train_ids], rng)

    def expand(groups) -> list[str]:
        return sorted(s for g in groups for s in members[g])

    out = {
        "seed": seed,
        "stratify": stratify,
        "views": list(views),
        "train": expand(train_ids),
        "val": expand(val_ids),
        "test": expand(test_ids),
        "unlabeled": sorted(unlabeled),
        "other_views": sorted(other_views),  # views not split (e.g. long axis next to short axis)
        "budgets": {},
        "budget_fractions": {},
        "subsets": {},
    }
    if test_subjects is not None:
        out["fixed_test"] = list(test_source or ["given subjects"])
    for b in budgets or []:
        size = budget_size(b, len(train_ids))
        if size > len(train_ids):
            raise ConfigError(f"label budget {b} exceeds the {len(train_ids)} training patients")
        out["budgets"][size] = expand(train_order[:size])
        if isinstance(parse_budget(b), float):
            out["budget_fractions"][float(parse_budget(b))] = size
    out["budgets"] = dict(sorted(out["budgets"].items()))
    vendor_of = dict(zip(labeled["subject"], labeled["vendor"].fillna("unknown").astype(str)))
    train_subjects = out["train"]
    for name, vendors in (vendor_groups or {}).items():
        out["subsets"][name] = sorted(i for i in train_subjects if vendor_of[i] in vendors)
    return out


def _fixed_test_parts(subjects: pd.DataFrame, unlabeled_ids: list[str], members: dict[str, list[str]], test_subjects,
                      val, strat_of: dict[str, str], rng) -> tuple[list[str], list[str], list[str]]:
    """(test, val, train) patients when ``test_subjects`` are the test set: the rest gives val and train."""
    fixed = {str(s) for s in test_subjects}
    known = set(subjects["subject"].astype(str))
    unknown = sorted(fixed - known)
    if unknown:
        raise ConfigError(f"{len(unknown)} test subject(s) are not in the cache: {', '.join(unknown[:8])}")
    if not fixed:
        raise ConfigError("the fixed test set is empty")
    unlabeled = sorted(fixed & set(unlabeled_ids))
    if unlabeled:
        raise ConfigError(f"{len(unlabeled)} test subject(s) have no labels to score: {', '.join(unlabeled[:8])} "
                          "(prepare their label files too, or leave them out of the test set)")
    test_ids, rest = [], []
    for g, ids in members.items():
        inside = [i for i in ids if i in fixed]
        if inside and len(inside) != len(ids):
            raise ConfigError(f"patient {g.split(':')[-1]} has subjects both in the test set ({', '.join(inside)}) "
                              f"and out of it ({', '.join(sorted(set(ids) - fixed))}): a patient is in one part")
        (test_ids if inside else rest).append(g)
    n_val = round(val * len(rest)) if isinstance(val, float) and val < 1 else int(val)
    if n_val >= len(rest):
        raise ConfigError(f"{len(rest)} labeled patients outside the test set cannot give {n_val} val and leave "
                          "any for training")
    order = stratified_order(rest, [strat_of[i] for i in rest], rng)
    return test_ids, order[:n_val], order[n_val:]


def _official_parts(first: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(test, val, train) patients from the ``official_split`` column (train / val / test)."""
    if "official_split" not in first or first["official_split"].isna().any():
        raise ConfigError(
            "official=True needs an official_split (train / val / test) for every labeled subject; "
            "this cache has none for some (only EchoNet-Dynamic ships one)"
        )
    part = first["official_split"].astype(str).str.lower()
    unknown = sorted(set(part) - {"train", "val", "test"})
    if unknown:
        raise ConfigError(f"official_split values {unknown} are not train / val / test")
    parts = {name: [i for i, p in zip(first.index, part) if p == name] for name in ("train", "val", "test")}
    return parts["test"], parts["val"], parts["train"]


def save_split(split: dict, path: str | Path) -> Path:
    return write_yaml(path, split)


def load_split(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file not found")
    try:
        split = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML: {e}") from None
    if not isinstance(split, dict):
        raise DataError(path, "not a split file (expected a mapping with train, val, test)")
    missing = [k for k in ("train", "val", "test") if k not in split]
    if missing:
        raise DataError(path, f"split file lacks {missing}")
    for key in ("train", "val", "test", "unlabeled", "other_views"):
        if split.get(key) is None:
            split[key] = []
        if not isinstance(split[key], list):
            raise DataError(path, f"{key} must be a list of subject keys, got {type(split[key]).__name__}")
        split[key] = [str(v) for v in split[key]]
    for key in ("budgets", "subsets", "budget_fractions"):
        if split.get(key) is None:
            split[key] = {}
        if not isinstance(split[key], dict):
            raise DataError(path, f"{key} must be a mapping, got {type(split[key]).__name__}")
    try:
        split["budgets"] = {int(k): [str(v) for v in vs] for k, vs in split["budgets"].items()}
        split["budget_fractions"] = {float(k): int(v) for k, v in split["budget_fractions"].items()}
        split["subsets"] = {str(k): [str(v) for v in vs] for k, vs in split["subsets"].items()}
    except (TypeError, ValueError) as e:
        raise DataError(path, f"garbled budgets / subsets ({e})") from None
    check_split(split, path)
    return split


def check_split(split: dict, path: str | Path | None = None) -> None:
    """A subject in two of train / val / test, or a val/test subject among the unlabeled (pretraining)
    subjects, would be trained on and then scored: refuse, naming the file and the subjects. The same
    for a budget or subset (training subjects) holding a val or test subject."""
    parts = ("train", "val", "test", "unlabeled")
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            if (a, b) == ("train", "unlabeled"):
                continue  # pretraining uses both; train subjects are never listed as unlabeled, but harmless
            both = sorted(set(split[a]) & set(split[b]))
            if both:
                shown = ", ".join(both[:8]) + (", ..." if len(both) > 8 else "")
                raise DataError(path, f"{len(both)} subject(s) in both {a} and {b}: {shown}")
        dup = sorted({x for x in split[a] if split[a].count(x) > 1})
        if dup:
            raise DataError(path, f"subject(s) listed twice in {a}: {', '.join(dup[:8])}")
    scored = {s: part for part in ("val", "test") for s in split[part]}
    for kind in ("budgets", "subsets"):
        for name, ids in split[kind].items():
            leak = sorted(set(ids) & set(scored))
            if leak:
                raise DataError(path, f"{kind} {name} holds {len(leak)} {scored[leak[0]]} subject(s), which would "
                                      f"be trained on and scored: {', '.join(leak[:8])}")
