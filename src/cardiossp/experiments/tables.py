"""Paper-style tables from ``results.csv`` (de Mooij et al. 2024, Table 1 and the ablations).

Every cell is mean ± std **across seeds** of per-run scores, a per-run score being the mean over
the run's test cases (subjects x phases) as ``evaluate`` reports it; std is the sample standard
deviation (ddof 1), left out when a cell has one seed. Tables:

* ``label_budget``: rows labeled subjects (largest first), columns methods; mean foreground Dice
  and one table per class.
* ``phase``: rows method x training phase, columns test phase (ED, ES).
* ``domain``: rows method x training group, columns in-domain / out-of-domain test cases
  (the domain key's value in / not in the group).
* ``augmentation``: rows method, columns augmentation preset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_csv, write_text

CLASSES = ("mean", "LV", "MYO", "RV")


def mean_std(values, digits: int = 3) -> str:
    v = np.asarray([x for x in values if pd.notna(x)], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.{digits}f}" if v.size == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _study(results: pd.DataFrame, study: str, metric: str = "dice") -> pd.DataFrame:
    r = results[(results["metric"] == metric) & results["studies"].fillna("").str.split("+").map(lambda s: study in s)]
    return r


def _pivot(scores: pd.DataFrame, rows: list[str], col: str) -> pd.DataFrame:
    """Per-run scores (one value per run and cell) -> mean ± std over seeds, pivoted."""
    cells = scores.groupby(rows + [col], sort=False)["value"].apply(mean_std).reset_index()
    table = cells.pivot(index=rows, columns=col, values="value")
    return table.reindex(columns=list(dict.fromkeys(scores[col])))


def label_budget_table(results: pd.DataFrame, cls: str = "mean") -> pd.DataFrame:
    r = _study(results, "label_budget")
    r = r[r["class"] == cls]
    per_run = r.groupby(["run", "method", "budget", "budget_label", "seed"], sort=False)["value"].mean().reset_index()
    per_run["labeled subjects"] = [f"{lbl} ({b})" if lbl == "all" else str(b)
                                   for lbl, b in zip(per_run["budget_label"], per_run["budget"])]
    per_run = per_run.sort_values("budget", ascending=False, kind="stable")
    # pivot sorts its rows as strings ("10" < "3" < "5"): put them back in budget order
    return _pivot(per_run, ["labeled subjects"], "method").reindex(list(dict.fromkeys(per_run["labeled subjects"])))


def phase_table(results: pd.DataFrame) -> pd.DataFrame:
    r = _study(results, "phase")
    r = r[r["class"] == "mean"]
    per_run = r.groupby(["run", "method", "train_phases", "seed", "phase"], sort=False)["value"].mean().reset_index()
    per_run = per_run.rename(columns={"train_phases": "trained on", "phase": "tested on"})
    return _pivot(per_run, ["method", "trained on"], "tested on")


def domain_table(results: pd.DataFrame, key: str, groups: dict[str, list]) -> pd.DataFrame:
    r = _study(results, "domain")
    r = r[r["class"] == "mean"].copy()
    if r.empty:
        return pd.DataFrame()
    inside = [str(v) in {str(x) for x in groups.get(g, [])} for v, g in zip(r[key], r["subset"])]
    r["test"] = np.where(inside, "in-domain", "out-of-domain")
    per_run = r.groupby(["run", "method", "subset", "seed", "test"], sort=False)["value"].mean().reset_index()
    per_run = per_run.rename(columns={"subset": "trained on"})
    t = _pivot(per_run, ["method", "trained on"], "test")
    return t.reindex(columns=[c for c in ("in-domain", "out-of-domain") if c in t.columns])


def augmentation_table(results: pd.DataFrame) -> pd.DataFrame:
    r = _study(results, "augmentation")
    r = r[r["class"] == "mean"]
    per_run = r.groupby(["run", "method", "augment", "seed"], sort=False)["value"].mean().reset_index()
    return _pivot(per_run, ["method"], "augment")


def all_tables(results: pd.DataFrame, plan: dict | None = None) -> dict[str, pd.DataFrame]:
    """Every table that has data, keyed by a file-friendly name."""
    plan = plan or {}
    domains = plan.get("domains") or {}
    tables = {"label_budget": label_budget_table(results)}
    for cls in CLASSES[1:]:
        tables[f"label_budget_{cls}"] = label_budget_table(results, cls)
    tables["phase"] = phase_table(results)
    tables["domain"] = domain_table(results, domains.get("key", "vendor"), domains.get("groups", {}))
    tables["augmentation"] = augmentation_table(results)
    return {k: v for k, v in tables.items() if not v.empty}


TITLES = {
    "label_budget": "Mean foreground 3D Dice (LV, MYO, RV) vs labeled training subjects",
    "label_budget_LV": "3D Dice LV", "label_budget_MYO": "3D Dice MYO", "label_budget_RV": "3D Dice RV",
    "phase": "Unseen phase: mean 3D Dice by training phase and test phase",
    "domain": "Unseen domain: mean 3D Dice in and out of the training domain",
    "augmentation": "Augmentation ablation: mean 3D Dice",
    "convergence": "Convergence: final validation Dice and iterations to reach 95 % of it",
}


def to_markdown(tables: dict[str, pd.DataFrame]) -> str:
    parts = ["Test-set 3D Dice in native geometry, mean ± std across seeds (sample std; one seed: mean only).", ""]
    for name, t in tables.items():
        t = t.reset_index()
        parts += [f"### {TITLES.get(name, name)}", "", "| " + " | ".join(map(str, t.columns)) + " |",
                  "|" + "---|" * len(t.columns)]
        parts += ["| " + " | ".join("–" if pd.isna(v) else str(v) for v in row) + " |"
                  for row in t.itertuples(index=False)]
        parts.append("")
    return "\n".join(parts)


def write_tables(tables: dict[str, pd.DataFrame], out: str | Path) -> Path:
    """``out/tables.md`` and ``out/tables/<name>.csv``, each written atomically."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, t in tables.items():
        write_csv(out / "tables" / f"{name}.csv", t, index=True)
    return write_text(out / "tables.md", to_markdown(tables))
