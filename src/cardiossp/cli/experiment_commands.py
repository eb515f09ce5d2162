"""Experiment commands: experiment (run a plan), table, plot, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from ..errors import CardiosspError, ConfigError
from .common import app, console, fail, print_table


def parse_data(items: list[str]) -> dict[str, str]:
    """``["acdc=/data/ACDC", "/only/path"]`` -> {reader: path} ("" for a bare path)."""
    out = {}
    for item in items:
        reader, _, path = item.rpartition("=")
        out[reader] = path
    return out


@app.command()
def experiment(
    plan: str = typer.Argument(..., help="plan name (paper, acdc-cpu, smoke) or a YAML file"),
    out: Path = typer.Option(..., help="campaign folder (created; re-use it to resume)"),
    data: list[str] = typer.Option([], help="READER=PATH replacing the plan's path for that reader "
                                           "(or just PATH for a one-source plan); repeatable"),
    studies: Optional[str] = typer.Option(None, help="only these studies: label_budget,phase,domain,augmentation"),
    shard: Optional[str] = typer.Option(None, help="I/N: run only this share of the runs (job arrays)"),
    runs: Optional[str] = typer.Option(None, help="only runs whose name matches one of these comma-separated "
                                       "patterns, e.g. 'bcp*-n5-s1' (a self-training run needs its teacher too)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and their status; run nothing"),
    progress: bool = typer.Option(False, help="show each run's training progress: a bar on a terminal, plain "
                                  "lines elsewhere (every run keeps its own RUN/train.log either way)"),
    device: str = typer.Option("auto", help="where test subjects are segmented: auto, cpu or cuda"),
    num_nodes: int = typer.Option(1, help="machines every pretraining and training run spans (DDP; start "
                                  "the command on every node)"),
) -> None:
    """Run an experiment plan: pretrain once per method, fine-tune per budget and seed, evaluate, tabulate.

    Finished runs are skipped and interrupted ones resume, so re-running the same command continues a
    killed campaign. A failing run is recorded (failed.json) and the others go on."""
    from ..config_checks import check_option
    from ..experiments import load_plan, run_campaign, write_report
    from ..experiments.execute import LocalExecutor
    from ..experiments.runner import parse_shard
    from ..inference import resolve_device

    try:  # every option checked before any work (a bad --device would otherwise fail after training)
        check_option("--num-nodes", num_nodes, int, ge=1)
        resolve_device(device)
        part = parse_shard(shard)
        only = [s.strip() for s in studies.split(",") if s.strip()] if studies else None
        p = load_plan(plan, parse_data(data))
        patterns = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
        rows = run_campaign(p, out, studies=only, shard=part, runs=patterns,
                            dry_run=dry_run, executor=LocalExecutor(progress=progress, num_nodes=num_nodes,
                                                                   device=device),
                            say=console.print)
        print_table(pd.DataFrame(rows), title=f"{p.name}: {len(rows)} runs" + (" (dry run)" if dry_run else ""))
        if dry_run:
            return
        report = write_report(out)
    except CardiosspError as e:
        fail(e)
    _show_report(report)
    failed = [r["run"] for r in rows if r["status"] == "failed"]
    if failed:
        console.print(f"[bold red]{len(failed)} run(s) failed[/]: {', '.join(failed)} (see their failed.json)")
        raise typer.Exit(code=1)


def _show_report(report: dict) -> None:
    for name, t in report["table_frames"].items():
        print_table(t.reset_index(), title=name)
    console.print(f"results: {report['results']}")
    if report["tables"]:
        console.print(f"tables:  {report['tables']}")
    for p in report["plots"]:
        console.print(f"figure:  {p}")


@app.command()
def table(out: Path = typer.Argument(..., help="campaign folder")) -> None:
    """Print and write the paper-style tables (tables.md, tables/*.csv) of a campaign."""
    from ..experiments.results import collect_results
    from ..experiments.runner import load_campaign
    from ..experiments.tables import all_tables, write_tables

    try:
        plan, _ = load_campaign(out)
        tables = all_tables(collect_results(out), plan)
        if not tables:
            raise ConfigError(f"{out}: no evaluated runs yet")
        path = write_tables(tables, out)
    except CardiosspError as e:
        fail(e)
    for name, t in tables.items():
        print_table(t.reset_index(), title=name)
    console.print(f"written: {path}")


@app.command()
def plot(out: Path = typer.Argument(..., help="campaign folder")) -> None:
    """Draw Dice vs labeled subjects per method (seed spread, per-class panels) and training curves."""
    from ..experiments import write_report

    try:
        report = write_report(out)
    except CardiosspError as e:
        fail(e)
    for p in report["plots"]:
        console.print(f"figure: {p}")


@app.command()
def demo(
    out: Path = typer.Option(Path("cardiossp-demo"), help="folder for everything the demo makes"),
    data: Optional[Path] = typer.Option(None, help="your dataset folder (default: the built-in phantom)"),
    reader: str = typer.Option("phantom", help="reader for --data (acdc, mnms, mnms2, nifti, ...)"),
    quick: bool = typer.Option(False, help="120 instead of 450 steps a run (about 1.5 min): checks the install"),
) -> None:
    """The whole pipeline in minutes: the `smoke` plan (prepare, pretrain MIM, train and fine-tune at two
    budgets, the phase / domain / augmentation studies, evaluate, tables, plots, overlays)."""
    from ..demo import run_demo

    try:
        report = run_demo(out, data=data, reader=reader if data else "phantom", say=console.print, quick=quick)
    except CardiosspError as e:
        fail(e)
    _show_report(report)
    for p in report["overlays"]:
        console.print(f"overlay: {p}")
    console.print(f"report (open in a browser): {report['html']}", highlight=False)
