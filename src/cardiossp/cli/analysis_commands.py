"""Analysis commands: analyse (full-cycle volumes of cine files) and report (one HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console, subject_progress


@app.command()
def analyse(
    inputs: list[Path] = typer.Argument(..., help="4D cine NIfTI files, folders of them, or DICOM cine folders"),
    model: Path = typer.Option(..., help="training run folder or checkpoint"),
    out: Path = typer.Option(..., help="output folder: OUT/<name>/ per cine, OUT/summary.csv"),
    phases: Optional[Path] = typer.Option(None, help="CSV name,ED,ES (0-based frames); default: ED = largest, "
                                                     "ES = smallest LV volume"),
    tta: bool = typer.Option(False, help="mirror test-time augmentation"),
    largest_component: bool = typer.Option(True, help="keep one connected heart (per class one component)"),
    device: str = typer.Option("auto", help="auto (CUDA when there is one), cpu or cuda[:N]"),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID to read when a DICOM folder holds several"),
) -> None:
    """Segment every frame of each cine: LV / RV volume curves, ED / ES, EDV, ESV, SV, EF and LV mass."""
    from ..analyse import analyse_files
    from ..inference import Segmenter

    seg = Segmenter.from_checkpoint(model, tta=tta, device=device)
    with subject_progress("analyse") as update:
        summary = analyse_files(seg, inputs, out, phases=phases, tta=tta, largest_component=largest_component,
                                progress=update, series=series)
    for row in summary.itertuples(index=False):
        console.print(f"{row.subject}: ED {row.ED}, ES {row.ES} ({row.phases_from}); LVEF {row.LV_EF:.1f} %, "
                      f"LV EDV {row.LV_EDV:.1f} mL, ESV {row.LV_ESV:.1f} mL, RVEF {row.RV_EF:.1f} %",
                      highlight=False)
    console.print(f"wrote {out / 'summary.csv'} and a folder per cine", highlight=False)


@app.command()
def report(
    target: Path = typer.Argument(..., help="a training run folder or a campaign folder"),
    out: Optional[Path] = typer.Option(None, help="HTML file (default: TARGET/report.html)"),
) -> None:
    """One self-contained HTML page: test tables, worst cases, overlays, volume curves (run) or Table 1 and the
    study tables and figures (campaign)."""
    from ..html_report import write_html_report

    console.print(f"wrote {write_html_report(target, out)}", highlight=False)
