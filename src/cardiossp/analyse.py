"""``cardiossp analyse``: segment every frame of cine files and report the cardiac cycle.

For each 4D input (NIfTI, NRRD or MetaImage file, or DICOM cine folder, as ``predict`` reads
them) it writes ``OUT/<name>/``:

* ``<name>_seg.<ext>``: every frame, internal labels, in the input's format as ``predict`` writes it;
* ``volumes.csv``: LV, MYO and RV volume per frame (mL);
* ``curve.png``: LV and RV volume over the cycle, ED and ES marked;

and one row per subject in ``OUT/summary.csv`` (ED, ES, where they came from, EDV / ESV / SV /
EF for LV and RV, LV mass). ED and ES come from ``--phases`` (a CSV with columns ``name,ED,ES``,
0-based frame indices, ``name`` the input's file stem) when it lists the input, else from the
LV volume curve (``evaluate.cycle.detect_ed_es``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import write_csv
from .errors import DataError
from .evaluate.cycle import CycleAnalysis, analyse_cycle, plot_cycle
from .inference import Segmenter
from .predict import _read_input, _stem, _write_labels, expand_inputs, output_name


def read_phases(path: str | Path) -> dict[str, tuple[int, int]]:
    """``name,ED,ES`` CSV -> {name: (ED, ES)} (0-based frame indices)."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read the phases table: {e}") from None
    missing = {"name", "ED", "ES"} - set(df.columns)
    if missing:
        raise DataError(path, f"phases table needs columns name, ED, ES; missing {sorted(missing)}")
    out = {}
    for row in df.itertuples(index=False):
        try:
            out[str(row.name)] = (int(row.ED), int(row.ES))
        except (TypeError, ValueError):
            raise DataError(path, f"row {row.name!r}: ED and ES must be integers, got {row.ED!r}, {row.ES!r}") from None
    return out


def analyse_files(model, inputs, out_dir, phases: str | Path | None = None, tta: bool = False,
                  largest_component: bool = True, device: str = "cpu", progress=None,
                  series: str | None = None) -> pd.DataFrame:
    """Segment each cine and write its cycle analysis; returns the summary table (also ``summary.csv``)."""
    seg = model if isinstance(model, Segmenter) else Segmenter.from_checkpoint(model, device=device)
    table = read_phases(phases) if phases else {}
    jobs = expand_inputs(inputs)
    out_dir = Path(out_dir)
    rows = []
    for i, (kind, path) in enumerate(jobs):
        image, spacing, affine, header, shape = _read_input(kind, path, series)
        if image.ndim != 4 or image.shape[3] < 2:
            raise DataError(path, f"full-cycle analysis needs a cine (X, Y, Z, T) with T >= 2; got shape {image.shape}")
        name = _stem(path)
        try:
            labels = seg(image, spacing, affine, tta=tta, largest_component=largest_component)
            ed, es = table.get(name, (None, None))
            result = analyse_cycle(labels, spacing, ed, es, subject=name)
        except DataError as e:
            raise DataError(path, e.problem) from None
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        _write_labels(labels, affine, header, shape, folder / output_name(kind, path))
        write_outputs(result, folder)
        rows.append(result.summary())
        if progress:
            progress(path.name, i + 1, len(jobs))
    summary = pd.DataFrame(rows)
    write_csv(out_dir / "summary.csv", summary)
    return summary


def write_outputs(result: CycleAnalysis, folder: Path, frame_ms: float | None = None) -> None:
    """``volumes.csv`` and ``curve.png`` of one subject."""
    curves = result.curves.assign(phase=["ED" if t == result.ed else "ES" if t == result.es else ""
                                         for t in result.curves["frame"]])
    write_csv(folder / "volumes.csv", curves)
    plot_cycle(result, folder / "curve.png", frame_ms)
