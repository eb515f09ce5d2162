"""Readable tables from an ``evaluate_run`` summary (``summary.json``), as Markdown.

``segmentation_table``: rows overall / per phase (/ per vendor), columns ``metric class``
as ``mean ± std`` (Dice as in de Mooij et al. 2024 Table 1; distances in mm).
``clinical_table``: one row per clinical index: MAE, bias (mean signed error), std of the error.
"""

from __future__ import annotations

import json
from pathlib import Path

CLASSES = ("LV", "MYO", "RV")


def _fmt(stat: dict | None, digits: int) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    s = f"{stat['mean']:.{digits}f}"
    return s + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def load_summary(path: str | Path) -> dict:
    """A summary dict from ``summary.json`` or from the eval folder holding it."""
    p = Path(path)
    return json.loads((p / "summary.json" if p.is_dir() else p).read_text())


def segmentation_table(summary: dict, metrics=("dice", "hd95"), by_vendor: bool = False) -> str:
    """Markdown table of ``metric_class`` means ± std: rows all / ED / ES (/ vendors)."""
    cols = [f"{m}_{c}" for m in metrics for c in CLASSES if f"{m}_{c}" in summary["overall"]]
    groups = [("all", summary["overall"])] + sorted(summary.get("per_phase", {}).items())
    if by_vendor:
        groups += [(f"vendor {v}", b) for v, b in sorted(summary.get("per_vendor", {}).items())]
    rows = [[name, str(block[cols[0]]["n"]) if cols else "0",
             *(_fmt(block.get(c), 3 if c.startswith("dice") else 2) for c in cols)] for name, block in groups]
    return _table(["cases", "n", *(c.replace("_", " ") for c in cols)], rows)


def clinical_table(summary: dict) -> str:
    """Markdown table: index, n, mean ground truth, MAE, median absolute error, bias, std of the error."""
    rows = []
    for k, s in summary.get("clinical", {}).items():
        rows.append([k, str(s["n"]), *(_number(s.get(f)) for f in ("gt_mean", "mae", "median_abs_error", "bias",
                                                                  "std_error"))])
    return _table(["index", "n", "mean (GT)", "MAE", "median abs error", "bias", "std error"], rows)


def _number(v) -> str:
    return "–" if v is None else f"{v:.2f}"
