"""Per-subject tables and totals of a raw dataset folder or a slice cache (``cardiossp info``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .readers import get_reader
from .slices import SliceCache


def raw_subject_table(reader: str, root: str | Path) -> pd.DataFrame:
    """Load every subject of a raw dataset once and tabulate it (one row per subject)."""
    from .readers.base import iter_subjects

    rows = []
    for s in iter_subjects(get_reader(reader), Path(root)):
        rows.append({
            "subject": s.subject_id, "dataset": s.dataset, "vendor": s.vendor, "centre": s.centre,
            "pathology": s.pathology, "view": s.view, "n_frames": s.n_frames, "n_slices": s.n_slices,
            "labeled_frames": len(s.labels), "spacing_x": s.spacing[0], "spacing_y": s.spacing[1],
            "spacing_z": s.spacing[2], "shape": "x".join(str(v) for v in s.image.shape[:3]),
            "metadata_missing": s.extra.get("metadata_missing"),
        })
    return pd.DataFrame(rows)


METADATA = ("vendor", "centre", "pathology")


def _unknown(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table:
        return pd.Series(True, index=table.index)
    values = table[column].astype(object)
    return values.isna() | values.astype(str).str.strip().isin(["", "nan", "None", "?"])


def missing_metadata(table: pd.DataFrame) -> list[str]:
    """One line per metadata column unknown for some subjects, e.g. ``vendor unknown for 3 of 6 subjects
    (mnms_A, mnms_B, mnms_C): <why, naming the info CSV>``."""
    lines = []
    for column in METADATA:
        bad = table[_unknown(table, column).to_numpy()]
        if len(bad) == 0:
            continue
        ids = ", ".join(map(str, bad["subject"].head(5))) + (", ..." if len(bad) > 5 else "")
        why = ""
        if "metadata_missing" in bad:
            reasons = sorted({str(r) for r in bad["metadata_missing"].dropna()})
            if reasons:
                why = f": {reasons[0]}" + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
        lines.append(f"{column} unknown for {len(bad)} of {len(table)} subjects ({ids}){why}")
    return lines


def cache_subject_table(cache: str | Path) -> pd.DataFrame:
    return SliceCache(cache).subjects.copy()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset and vendor: subjects, labeled/unlabeled subjects, frames, slices, spacings, and
    ``unknown``: how many subjects lack a vendor, centre or pathology (e.g. ``vendor 4``; the reasons,
    naming the info CSV, are in ``missing_metadata(table)``)."""
    t = table.copy()
    for column in METADATA:
        t[f"_unknown_{column}"] = _unknown(t, column).to_numpy()
    t["vendor"] = t["vendor"].fillna("?").astype(str)
    t["slices_2d"] = t["n_frames"] * t["n_slices"]
    t["labeled"] = t["labeled_frames"] > 0
    g = t.groupby(["dataset", "vendor"], dropna=False)
    out = pd.DataFrame({
        "subjects": g.size(),
        "labeled_subjects": g["labeled"].sum(),
        "unlabeled_subjects": g.size() - g["labeled"].sum(),
        "labeled_frames": g["labeled_frames"].sum(),
        "frames": g["n_frames"].sum(),
        "slices_2d": g["slices_2d"].sum(),
        "spacing_xy_mm": g["spacing_x"].agg(lambda s: f"{s.min():.2f}-{s.max():.2f}"),
        "spacing_z_mm": g["spacing_z"].agg(lambda s: f"{s.min():.1f}-{s.max():.1f}"),
        "unknown": g[[f"_unknown_{c}" for c in METADATA]].sum().apply(_missing_cell, axis=1),
    }).reset_index()
    total = {"dataset": "total", "vendor": "", **{c: out[c].sum() for c in
             ("subjects", "labeled_subjects", "unlabeled_subjects", "labeled_frames", "frames", "slices_2d")},
             "spacing_xy_mm": "", "spacing_z_mm": "",
             "unknown": _missing_cell(t[[f"_unknown_{c}" for c in METADATA]].sum())}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def _missing_cell(counts: pd.Series) -> str:
    """``vendor 3, pathology 3``: how many subjects of a row lack each metadata column."""
    return ", ".join(f"{name[len('_unknown_'):]} {int(n)}" for name, n in counts.items() if n)
