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
        })
    return pd.DataFrame(rows)


def cache_subject_table(cache: str | Path) -> pd.DataFrame:
    return SliceCache(cache).subjects.copy()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset and vendor: subjects, labeled/unlabeled subjects, frames, slices, spacings."""
    t = table.copy()
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
    }).reset_index()
    total = {"dataset": "total", "vendor": "", **{c: out[c].sum() for c in
             ("subjects", "labeled_subjects", "unlabeled_subjects", "labeled_frames", "frames", "slices_2d")},
             "spacing_xy_mm": "", "spacing_z_mm": ""}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)
