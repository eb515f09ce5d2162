"""After a campaign: ``results.csv``, ``tables.md`` (+ CSVs) and the figures in ``plots/``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .plots import dice_vs_budget, training_curves, validation_curves
from .results import collect_results
from .runner import load_campaign
from .tables import all_tables, write_tables


def write_report(out: str | Path) -> dict:
    """Collect the campaign in ``out`` and write its table and figures; returns what was written."""
    out = Path(out)
    plan, runs = load_campaign(out)
    results = collect_results(out)
    tables = all_tables(results, plan)
    written = {"results": out / "results.csv", "tables": write_tables(tables, out) if tables else None}
    curves = validation_curves({s.name.removeprefix("runs/"): (s.method, out / s.name) for s in runs
                                if s.kind == "train"})
    written["plots"] = dice_vs_budget(results, out / "plots") + training_curves(curves, out / "plots")
    written["table_frames"] = tables
    return written


def read_results(out: str | Path) -> pd.DataFrame:
    path = Path(out) / "results.csv"
    return pd.read_csv(path) if path.is_file() else collect_results(out)
