"""Convergence analysis (Kalapos & Gyires-Tóth 2022): how fast does validation Dice rise per start?

For every fine-tuning run, from its validation curve (``logs/metrics.csv``, validation pseudo-Dice
against training iterations): the final validation Dice (last value) and the **iterations to reach
95 % of it** (the first validation point at or above 0.95 x final; resolution = the run's
``schedule.val_every``). The table gives mean ± std across seeds per setting (start, budget, ...);
the figure draws the curves of the ``convergence`` study, mean across seeds per start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .plots import _colors, _save, plt
from .tables import mean_std


def iterations_to_fraction(steps, values, fraction: float = 0.95) -> tuple[float, int | None]:
    """(final value, first iteration count whose value >= fraction x final) of one validation curve."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), None
    final = v[-1]
    hit = np.nonzero(v >= fraction * final)[0]
    return float(final), int(np.asarray(steps)[hit[0]]) + 1  # Lightning's step is 0-based


def convergence_summary(curves: pd.DataFrame, runs: pd.DataFrame, fraction: float = 0.95) -> pd.DataFrame:
    """``curves`` (run, method, step, val_dice) + ``runs`` (run, budget, seed) -> one row per run."""
    rows = []
    for run, df in curves.groupby("run", sort=False):
        df = df.sort_values("step")
        final, iters = iterations_to_fraction(df["step"], df["val_dice"], fraction)
        rows.append({"run": run, "method": df["method"].iloc[0], "final_val_dice": final, "iterations_to_95": iters})
    out = pd.DataFrame(rows)
    return out.merge(runs, on="run", how="left") if not out.empty else out


def convergence_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std across seeds of the final validation Dice and the iterations to 95 % of it, one row
    per setting (the run's name without its seed: method, budget, phases, augmentation, subset)."""
    if summary.empty:
        return summary
    setting = summary["run"].str.replace(r"-s\d+(?=-|$)", "", regex=True)
    g = summary.assign(setting=setting).groupby("setting", sort=False)
    return pd.DataFrame({
        "final val Dice": g["final_val_dice"].apply(mean_std),
        "iterations to 95 %": g["iterations_to_95"].apply(lambda s: mean_std(s, digits=0)),
        "seeds": g.size(),
    })


def convergence_plot(curves: pd.DataFrame, out: str | Path, name: str = "convergence") -> list[Path]:
    """Validation Dice vs iterations, mean across seeds per start (method); thin lines = single runs."""
    if curves.empty:
        return []
    colors = _colors(curves["method"].unique())
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, df in curves.groupby("method", sort=False):
        for _, run in df.groupby("run"):
            ax.plot(run["step"] + 1, run["val_dice"], color=colors[method], alpha=0.25, linewidth=0.8)
        mean = df.groupby("step")["val_dice"].mean()
        ax.plot(mean.index + 1, mean.values, color=colors[method], linewidth=2, label=method)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("validation pseudo-Dice (mean LV, MYO, RV)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out), name)
