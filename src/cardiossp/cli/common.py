"""The Typer app, the console and small helpers shared by every command module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Self-supervised pretraining and few-label fine-tuning for cardiac cine MR segmentation.\n\n"
                       "Labels everywhere: 0 background, 1 LV, 2 MYO, 3 RV.")
console = Console(stderr=True)


def fail(e: Exception) -> None:
    """Print a one-line error and exit with status 2 (no traceback for expected errors)."""
    console.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


def print_table(df, title: str = "") -> None:
    table = Table(title=title or None)
    for c in df.columns:
        table.add_column(str(c))
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 160).print(table)
