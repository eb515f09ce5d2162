"""Data commands: prepare, info, split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import CardiosspError
from .common import app, console, print_table
from .common import fail as _fail


@app.command()
def prepare(
    reader: list[str] = typer.Option(..., "--reader", "-r", help="reader name, once per --data (acdc, camus, "
                                     "echonet, mnms, mnms2, nifti, phantom, sunnybrook)"),
    data: list[Path] = typer.Option(..., "--data", "-d", help="dataset folder, once per --reader"),
    out: Path = typer.Option(..., "--out", "-o", help="cache folder to create or update"),
    spacing: float = typer.Option(1.25, help="in-plane target spacing, mm"),
    size: int = typer.Option(256, help="crop/pad size of every 2D slice, pixels"),
) -> None:
    """Preprocess datasets into a slice cache (resample, crop/pad, z-score, float16, manifest)."""
    from rich.progress import Progress

    from ..data.cache import prepare as run

    if len(reader) != len(data):
        _fail(CardiosspError(f"give one --reader per --data (got {len(reader)} readers, {len(data)} folders)"))
    t0 = time.time()
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("prepare", total=None)

            def progress(sid, i, n, reused):
                bar.update(task, completed=i, total=n, description=f"{sid}{' (cached)' if reused else ''}")

            run(zip(reader, data), out, spacing=spacing, size=size, progress=progress)
    except CardiosspError as e:
        _fail(e)
    from ..data.info import cache_subject_table, summarize

    print_table(summarize(cache_subject_table(out)), title=f"cache {out}")
    console.print(f"prepared {out} in {time.time() - t0:.1f} s")


@app.command()
def info(
    path: Path = typer.Argument(..., help="a cache folder, or a raw dataset folder with --reader"),
    reader: Optional[str] = typer.Option(None, "--reader", "-r", help="reader for a raw dataset folder"),
    subjects: bool = typer.Option(False, "--subjects", help="also list every subject"),
) -> None:
    """Table of a dataset or cache: subjects, labeled frames, frames, slices, vendors, spacings."""
    from ..data.info import cache_subject_table, raw_subject_table, summarize

    try:
        table = raw_subject_table(reader, path) if reader else cache_subject_table(path)
    except CardiosspError as e:
        _fail(e)
    if subjects:
        print_table(table, title="subjects")
    print_table(summarize(table), title=str(path))


@app.command()
def split(
    cache: Path = typer.Option(..., help="cache folder"),
    out: Path = typer.Option(..., help="split file to write (YAML)"),
    seed: int = typer.Option(0),
    val: float = typer.Option(0.15, help="fraction (<1) or number of labeled subjects for validation"),
    test: float = typer.Option(0.2, help="fraction (<1) or number of labeled subjects for testing"),
    budgets: str = typer.Option("", help="comma-separated label budgets: patients (10), fractions of the training "
                                         "patients (0.05 or 5%) or all, e.g. 0.05,10,all"),
    stratify: str = typer.Option("auto", help="vendor, pathology, dataset, none, or auto (vendor if several)"),
    vendor_groups: str = typer.Option("", help="named vendor groups, e.g. AB=A+B,CD=C+D"),
    views: str = typer.Option("", help="views to split, e.g. 2CH,4CH (default: SA if present, else every view)"),
    official: bool = typer.Option(False, help="keep the dataset's own train/val/test (EchoNet-Dynamic's Split)"),
) -> None:
    """Subject-level train/val/test split with nested label budgets and vendor subsets."""
    from ..data.slices import SliceCache
    from ..data.splits import make_split, parse_budgets, save_split

    try:
        groups = {}
        for item in filter(None, vendor_groups.split(",")):
            name, vendors = item.split("=")
            groups[f"vendor_{name}"] = vendors.split("+")
        s = make_split(SliceCache(cache).subjects, seed=seed, val=val if val < 1 else int(val),
                       test=test if test < 1 else int(test),
                       budgets=parse_budgets(budgets), stratify=stratify, vendor_groups=groups,
                       views=[v.strip() for v in views.split(",") if v.strip()] or None, official=official)
        save_split(s, out)
    except (CardiosspError, ValueError) as e:
        _fail(e)
    console.print(f"wrote {out}: train {len(s['train'])}, val {len(s['val'])}, test {len(s['test'])}, "
                  f"unlabeled {len(s['unlabeled'])}, budgets {sorted(s['budgets'])}"
                  + "".join(f", {f:g} of the labels = budget {n}" for f, n in s["budget_fractions"].items()))
