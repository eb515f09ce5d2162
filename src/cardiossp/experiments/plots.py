"""Figures of a campaign (PNG and SVG, matplotlib's Agg backend).

* ``dice_vs_budget``: test 3D Dice vs labeled training subjects per method, one panel per class
  (mean, LV, MYO, RV); line = mean across seeds, band = min..max across seeds.
* ``training_curves``: validation Dice against training iterations of every fine-tuning run
  (from its ``logs/metrics.csv``), coloured by method.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from .tables import CLASSES  # noqa: E402


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        with atomic_path(out / f"{name}.{ext}", suffix=f".{ext}") as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=ext)
        paths.append(out / f"{name}.{ext}")
    plt.close(fig)
    return paths


def _colors(methods) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def dice_vs_budget(results: pd.DataFrame, out: str | Path) -> list[Path]:
    r = results[(results["metric"] == "dice") & results["studies"].str.contains("label_budget", na=False)]
    if r.empty:
        return []
    per_run = r.groupby(["method", "budget", "seed", "class"], sort=False)["value"].mean().reset_index()
    colors = _colors(per_run["method"].unique())
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(4 * len(CLASSES), 3.4), sharex=True)
    for ax, cls in zip(axes, CLASSES):
        for method, df in per_run[per_run["class"] == cls].groupby("method", sort=False):
            s = df.groupby("budget")["value"].agg(["mean", "min", "max"]).sort_index()
            ax.plot(s.index, s["mean"], marker="o", color=colors[method], label=method)
            ax.fill_between(s.index, s["min"], s["max"], color=colors[method], alpha=0.2, linewidth=0)
        ax.set_title("mean foreground" if cls == "mean" else cls)
        ax.set_xscale("log")
        budgets = sorted(per_run["budget"].dropna().unique())
        ax.set_xticks(budgets, [str(int(b)) for b in budgets])
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_xlabel("labeled training subjects")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test 3D Dice")
    axes[-1].legend(loc="lower right", fontsize=8)
    return _save(fig, Path(out), "dice_vs_budget")


def validation_curves(runs: dict[str, tuple[str, Path]]) -> pd.DataFrame:
    """``{run: (method, folder)}`` -> rows (run, method, step, val_dice) from each run's metrics.csv."""
    rows = []
    for run, (method, folder) in runs.items():
        path = folder / "logs" / "metrics.csv"
        if not path.is_file():
            continue
        m = pd.read_csv(path)
        if "val_dice" not in m:
            continue
        v = m.dropna(subset=["val_dice"])[["step", "val_dice"]]
        rows.append(v.assign(run=run, method=method))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["step", "val_dice", "run", "method"])


def training_curves(curves: pd.DataFrame, out: str | Path) -> list[Path]:
    if curves.empty:
        return []
    colors = _colors(curves["method"].unique())
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = set()
    for _, df in curves.groupby("run", sort=False):
        method = df["method"].iloc[0]
        ax.plot(df["step"] + 1, df["val_dice"], color=colors[method], alpha=0.7,
                label=None if method in seen else method)
        seen.add(method)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("validation pseudo-Dice (mean LV, MYO, RV)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out), "training_curves")
