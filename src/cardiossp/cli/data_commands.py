"""Data commands: prepare, info, split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import CardiosspError, ConfigError, DataError
from .common import app, console, print_table, subject_progress
from .common import fail as _fail

STRATIFY = ("auto", "vendor", "pathology", "dataset", "none")  # data.splits.make_split's stratify


def check_grid(spacing: float, size: int) -> None:
    """``--spacing`` (mm, > 0) and ``--size`` (px, >= 16) of a cache, checked before any work."""
    from ..config import MIN_SIZE
    from ..config_checks import check_option

    check_option("--spacing", spacing, float, gt=0)
    check_option("--size", size, int, ge=MIN_SIZE)


def _check_sources(readers: list[str], folders: list[Path]) -> None:
    """Every ``--reader`` registered and every ``--data`` there, before the cache folder is made."""
    from ..data.readers import READERS

    for name, folder in zip(readers, folders):
        READERS.get(name)  # ConfigError: unknown reader ..., known: ...
        if not folder.exists():
            raise DataError(folder, f"no such file or folder (--data for --reader {name})")


@app.command()
def prepare(
    reader: list[str] = typer.Option(..., "--reader", "-r", help="reader name, once per --data (acdc, camus, "
                                     "echonet, mnms, mnms2, nifti, phantom, sunnybrook)"),
    data: list[Path] = typer.Option(..., "--data", "-d", help="dataset folder, once per --reader"),
    out: Path = typer.Option(..., "--out", "-o", help="cache folder to create, or to add these sources to"),
    spacing: float = typer.Option(1.25, help="in-plane target spacing, mm"),
    size: int = typer.Option(256, help="crop/pad size of every 2D slice, pixels"),
) -> None:
    """Preprocess datasets into a slice cache (resample, crop/pad, z-score, float16, manifest).

    An existing cache keeps the subjects of its other sources; one prepare writes a cache at a time (others wait)."""
    from ..data.cache import prepare as run

    if len(reader) != len(data):
        _fail(CardiosspError(f"give one --reader per --data (got {len(reader)} readers, {len(data)} folders)"))
    t0 = time.time()
    try:
        check_grid(spacing, size)
        _check_sources(reader, data)
        with subject_progress("prepare") as update:  # a bar on a terminal, else one line per subject
            run(zip(reader, data), out, spacing=spacing, size=size,
                progress=lambda sid, i, n, reused: update(sid, i, n, "(cached)" if reused else ""),
                on_wait=lambda message: console.print(message))
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
    test: Optional[float] = typer.Option(None, help="fraction (<1) or number of labeled subjects for testing "
                                         "(default 0.2; not with --test-from / --test-list)"),
    test_from: list[str] = typer.Option([], "--test-from", help="READER=PATH: every subject that reader finds at "
                                        "PATH is a test subject (prepared into this cache), e.g. "
                                        "acdc=/data/acdc/testing (repeatable)"),
    test_list: Optional[Path] = typer.Option(None, "--test-list", help="file of test subjects, one per line "
                                             "(cache keys such as acdc_patient101, or subject ids)"),
    budgets: str = typer.Option("", help="comma-separated label budgets: patients (10), fractions of the training "
                                         "patients (0.05 or 5%) or all, e.g. 0.05,10,all"),
    stratify: str = typer.Option("auto", help="vendor, pathology, dataset, none, or auto (vendor if several)"),
    vendor_groups: str = typer.Option("", help="named vendor groups, e.g. AB=A+B,CD=C+D"),
    views: str = typer.Option("", help="views to split, e.g. 2CH,4CH (default: SA if present, else every view)"),
    official: bool = typer.Option(False, help="keep the dataset's own train/val/test (EchoNet-Dynamic's Split)"),
) -> None:
    """Subject-level train/val/test split with nested label budgets and vendor subsets.

    With --test-from / --test-list the test set is exactly those subjects; the rest gives train and val."""
    from ..data.budgets import parse_budgets
    from ..data.slices import SliceCache
    from ..data.splits import make_split, save_split

    try:
        fixed = bool(test_from or test_list)
        if fixed and test is not None:
            raise ConfigError("give --test, or a fixed test set (--test-from / --test-list), not both")
        if fixed and official:
            raise ConfigError("--official keeps the dataset's own test set: leave out --test-from / --test-list")
        parts = _split_options(seed, val, 0.2 if test is None else test, stratify)
        cache_ = SliceCache(cache)
        test_subjects, test_source = _fixed_test(cache_, test_from, test_list) if fixed else (None, None)
        groups = _vendor_groups(vendor_groups)
        try:
            label_budgets = parse_budgets(budgets)
        except ConfigError as e:
            raise ConfigError(f"--budgets {budgets!r}: {e}") from None
        s = make_split(cache_.subjects, seed=seed, val=parts["--val"], test=parts["--test"],
                       budgets=label_budgets, stratify=stratify, vendor_groups=groups,
                       views=[v.strip() for v in views.split(",") if v.strip()] or None, official=official,
                       test_subjects=test_subjects, test_source=test_source)
        save_split(s, out)
    except (CardiosspError, ValueError) as e:
        _fail(e)
    console.print(f"wrote {out}: train {len(s['train'])}, val {len(s['val'])}, test {len(s['test'])}, "
                  f"unlabeled {len(s['unlabeled'])}, budgets {sorted(s['budgets'])}"
                  + "".join(f", {f:g} of the labels = budget {n}" for f, n in s["budget_fractions"].items()))


def _fixed_test(cache, test_from: list[str], test_list: Path | None) -> tuple[list[str], list[str]]:
    """``--test-from READER=PATH`` items and ``--test-list FILE`` -> (subject keys, where each came from)."""
    from ..data.holdout import read_subject_list, subjects_from_source
    from ..data.readers import READERS

    keys: set[str] = set()
    where: list[str] = []
    for item in test_from:
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise ConfigError(f"--test-from must look like READER=PATH, e.g. acdc=/data/acdc/testing (got {item!r})")
        READERS.get(name.strip())  # ConfigError: unknown reader ..., known: ...
        folder = Path(path.strip()).expanduser()
        keys |= set(subjects_from_source(cache, name.strip(), folder))
        where.append(f"{name.strip()}={folder.resolve()}")
    if test_list is not None:
        keys |= set(read_subject_list(test_list, cache.subjects))
        where.append(f"list {Path(test_list).resolve()}")
    return sorted(keys), where


def _split_options(seed: int, val: float, test: float, stratify: str) -> dict[str, float | int]:
    """``--val`` / ``--test``: a fraction in [0, 1) or a whole number of subjects (returned as an int)."""
    from ..config import MAX_SEED
    from ..config_checks import check_option

    check_option("--seed", seed, int, ge=0, le=MAX_SEED)
    check_option("--stratify", stratify, str, choices=STRATIFY)
    out: dict[str, float | int] = {}
    for name, value in (("--val", val), ("--test", test)):
        check_option(name, value, float, ge=0)
        if value >= 1 and value != int(value):
            raise ConfigError(f"{name} must be a fraction in [0, 1) or a whole number of subjects (got {value:g})")
        out[name] = value if value < 1 else int(value)
    return out


def _vendor_groups(text: str) -> dict[str, list[str]]:
    """``"AB=A+B,CD=C+D"`` -> ``{"vendor_AB": ["A", "B"], "vendor_CD": ["C", "D"]}``."""
    groups = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, eq, vendors = item.partition("=")
        members = [v.strip() for v in vendors.split("+") if v.strip()]
        if not eq or not name.strip() or not members:
            raise ConfigError(f"--vendor-groups must look like NAME=V1+V2,NAME2=V3 (got {item!r} in {text!r})")
        groups[f"vendor_{name.strip()}"] = members
    return groups
