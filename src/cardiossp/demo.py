"""``cardiossp demo``: the whole pipeline end to end in minutes, on the built-in phantom or your data.

Runs the ``smoke`` experiment plan (prepare -> split -> pretrain MIM -> train from scratch and
fine-tune from MIM at two label budgets, plus one run of each other study -> evaluate on the
test subjects in native geometry -> results.csv, tables.md, plots), draws prediction overlays
of scratch vs MIM on a test subject and ends with the path of its HTML page (``report.html``).
It shows the pipeline works, not what a method is worth (``cardiossp experiment acdc-cpu`` for that).
With ``data`` the same studies run on a real dataset with the cpu presets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .data.slices import SliceCache
from .data.splits import load_split
from .experiments import load_plan, run_campaign, write_report
from .experiments.execute import LocalExecutor
from .experiments.overlays import overlay_figure
from .html_report import write_html_report

QUICK = {"pretrain": {"schedule.epochs": 4, "schedule.iters_per_epoch": 15},
         "train": {"schedule.epochs": 8, "schedule.iters_per_epoch": 15, "schedule.val_every": 4}}


def demo_plan(data: str | Path | None, reader: str, quick: bool = False):
    plan = load_plan("smoke")
    if quick:  # a check that the install works: too short to learn every class
        plan.pretrain = {**plan.pretrain, "set": QUICK["pretrain"]}
        plan.train = {**plan.train, "set": QUICK["train"]}
    if data is not None:  # a real dataset: the cpu presets on their grid, budgets 5 and 10
        plan.data = [{"reader": reader, "path": str(data)}]
        plan.cache = {"spacing": 1.6, "size": 160}
        plan.split = {"seed": 0, "val": 0.1, "test": 0.2}
        plan.pretrain = {"preset": "cpu", "seeds": [0]}
        plan.train = {"preset": "cpu"}
        plan.studies["label_budget"]["budgets"] = [5, 10]
        for study in ("phase", "augmentation"):
            plan.studies[study]["budget"] = 10
        if plan.domains.get("key") == "vendor":
            plan.studies.pop("domain")  # the user's data may have a single vendor
    return plan


def run_demo(out: str | Path, data: str | Path | None = None, reader: str = "phantom",
             say: Callable[[str], None] = print, quick: bool = False) -> dict:
    out = Path(out)
    plan = demo_plan(data, reader, quick)
    rows = run_campaign(plan, out, executor=LocalExecutor(), say=say)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        say(f"{len(failed)} run(s) failed: " + ", ".join(r["run"] for r in failed))
    report = write_report(out)
    split = load_split(out / "split.yaml")
    budget = max(plan.studies["label_budget"]["budgets"])
    runs = {f"{m} n={budget}": out / "runs" / f"{m}-n{budget}-s0" for m in ("scratch", "mim")}
    runs = {k: v for k, v in runs.items() if (v / "done.json").is_file()}
    report["overlays"] = []
    if runs and split["test"]:
        report["overlays"] = overlay_figure(SliceCache(out / "cache"), split["test"][0], runs, out / "plots")
    report["html"] = write_html_report(out)
    return report
