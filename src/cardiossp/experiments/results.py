"""One tidy table of a campaign: every run x test subject x phase x class x metric.

``results.csv`` columns: the run's settings (run, studies, method, budget, seed, train_phases,
augment, subset), the test case (subject, dataset, vendor, centre, pathology, phase), then
``class`` (LV, MYO, RV, mean), ``metric`` (dice, hd95, assd, mcd) and ``value``. Budget "all"
is written as the number of training subjects the run used, with ``budget_label`` "all".
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..atomic import write_csv
from .runner import load_campaign

CASE_COLUMNS = ["subject", "dataset", "vendor", "centre", "pathology", "phase"]
RUN_COLUMNS = ["run", "studies", "method", "budget", "budget_label", "seed", "train_phases", "augment", "subset"]


def _n_train(folder: Path) -> int | None:
    done = folder / "done.json"
    if done.is_file():
        n = json.loads(done.read_text()).get("train_subjects")
        return int(n) if n is not None else None
    return None


def run_rows(spec, folder: Path) -> pd.DataFrame | None:
    """Long-format rows of one evaluated fine-tuning run (None if it has no test evaluation)."""
    per_subject = folder / "eval" / spec.eval_folder / "per_subject.csv"
    if not per_subject.is_file():
        return None
    df = pd.read_csv(per_subject)
    metric_cols = [c for c in df.columns if "_" in c and c.split("_", 1)[0] in ("dice", "hd95", "assd", "mcd")]
    long = df.melt(id_vars=[c for c in CASE_COLUMNS if c in df], value_vars=metric_cols, var_name="key")
    long[["metric", "class"]] = long["key"].str.split("_", n=1, expand=True)
    long = long.drop(columns="key")
    budget = spec.budget if spec.budget is not None else _n_train(folder)
    settings = {"run": spec.name.removeprefix("runs/"), "studies": "+".join(spec.studies), "method": spec.method,
                "budget": budget, "budget_label": "all" if spec.budget is None else str(spec.budget),
                "seed": spec.seed, "train_phases": "+".join(spec.phases), "augment": spec.augment or "",
                "subset": spec.subset or ""}
    for k, v in settings.items():
        long[k] = v
    return long[RUN_COLUMNS + [c for c in CASE_COLUMNS if c in long] + ["class", "metric", "value"]]


def collect_results(out: str | Path) -> pd.DataFrame:
    """Gather every evaluated run of the campaign in ``out`` and write ``out/results.csv`` atomically."""
    out = Path(out)
    _, runs = load_campaign(out)
    parts = [r for spec in runs if spec.kind == "train" and (r := run_rows(spec, out / spec.name)) is not None]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RUN_COLUMNS + ["value"])
    write_csv(out / "results.csv", table)
    return table


def run_scores(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """One row per run x class: the mean of ``metric`` over the run's test cases (subjects x phases),
    as ``evaluate``'s summary reports it (NaN skipped)."""
    r = results[results["metric"] == metric]
    keys = [c for c in RUN_COLUMNS if c in r]
    return r.groupby(keys + ["class"], dropna=False, sort=False)["value"].mean().reset_index()
