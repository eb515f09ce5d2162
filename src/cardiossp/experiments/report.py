"""After a campaign: ``results.csv``, ``tables.md`` (+ CSVs), ``convergence.csv`` and the figures in ``plots/``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import write_csv
from .convergence import convergence_plot, convergence_summary, convergence_table
from .plots import dice_vs_budget, training_curves, validation_curves
from .results import collect_results
from .runner import load_campaign
from .tables import all_tables, write_tables


def write_report(out: str | Path) -> dict:
    """Collect the campaign in ``out`` and write its tables and figures; returns what was written."""
    out = Path(out)
    plan, runs = load_campaign(out)
    train = [s for s in runs if s.kind == "train"]
    results = collect_results(out)
    tables = all_tables(results, plan)
    curves = validation_curves({s.name.removeprefix("runs/"): (s.method, out / s.name) for s in train})
    info = pd.DataFrame([{"run": s.name.removeprefix("runs/"), "budget": "all" if s.budget is None else str(s.budget),
                          "seed": s.seed, "studies": "+".join(s.studies)} for s in train])
    summary = convergence_summary(curves, info)
    plots = dice_vs_budget(results, out / "plots") + training_curves(curves, out / "plots")
    if not summary.empty:
        write_csv(out / "convergence.csv", summary)
        tables["convergence"] = convergence_table(summary)
        study = set(info[info["studies"].str.contains("convergence")]["run"])
        if study:
            plots += convergence_plot(curves[curves["run"].isin(study)], out / "plots")
    return {"results": out / "results.csv", "tables": write_tables(tables, out) if tables else None,
            "plots": plots, "table_frames": tables}

