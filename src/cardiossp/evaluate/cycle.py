"""Full-cycle analysis of a segmented cine: volume curves over the cardiac cycle, ED / ES
detection and the clinical indices at those frames.

Input: (X, Y, Z, T) internal labels (0 bg, 1 LV, 2 MYO, 3 RV) and the voxel spacing. Every
frame's LV, MYO and RV volume is voxel count x voxel volume (``clinical.volumes_ml``).
When the header or a table does not give them, end-diastole is the frame of the largest LV
blood-pool volume and end-systole that of the smallest (the usual definition for cine MR;
the RV indices are taken at the LV's frames, as ``clinical.clinical_indices`` does for the
two labeled frames of ACDC and M&Ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import DataError
from .clinical import clinical_indices, volumes_ml


@dataclass
class CycleAnalysis:
    subject: str
    curves: pd.DataFrame  # one row per frame: frame, LV_ml, MYO_ml, RV_ml
    ed: int
    es: int
    phases_from: str  # "given" | "detected"
    indices: dict[str, float] = field(default_factory=dict)  # LV/RV EDV, ESV, SV, EF, LV_mass_g

    def summary(self) -> dict:
        """One row for a per-subject table."""
        return {"subject": self.subject, "n_frames": len(self.curves), "ED": self.ed, "ES": self.es,
                "phases_from": self.phases_from, **self.indices}


def volume_curves(labels_xyzt: np.ndarray, spacing: Sequence[float]) -> pd.DataFrame:
    """(X, Y, Z, T) labels -> a frame-by-frame table of LV, MYO and RV volumes (mL)."""
    labels = np.asarray(labels_xyzt)
    if labels.ndim != 4:
        raise DataError(None, f"a cine label map is (X, Y, Z, T); got shape {labels.shape}")
    rows = []
    for t in range(labels.shape[3]):
        v = volumes_ml(labels[..., t], spacing)
        rows.append({"frame": t, "LV_ml": v["LV"], "MYO_ml": v["MYO"], "RV_ml": v["RV"]})
    return pd.DataFrame(rows)


def detect_ed_es(lv_ml: Sequence[float]) -> tuple[int, int]:
    """ED = frame of the largest LV volume, ES = frame of the smallest (first one on ties)."""
    lv = np.asarray(lv_ml, dtype=float)
    if lv.size < 2:
        raise DataError(None, f"ED / ES detection needs at least 2 frames; got {lv.size}")
    if not np.isfinite(lv).all() or lv.max() <= 0:
        raise DataError(None, "no LV found in any frame: ED / ES cannot be detected")
    if lv.max() == lv.min():
        raise DataError(None, "the LV volume is the same in every frame: ED / ES cannot be detected")
    return int(np.argmax(lv)), int(np.argmin(lv))


def analyse_cycle(labels_xyzt: np.ndarray, spacing: Sequence[float], ed: int | None = None,
                  es: int | None = None, subject: str = "") -> CycleAnalysis:
    """Volume curves, ED / ES (given, else detected from the LV curve) and the indices at them."""
    curves = volume_curves(labels_xyzt, spacing)
    n = len(curves)
    given = ed is not None and es is not None
    if (ed is None) != (es is None):
        raise DataError(None, f"{subject}: give both ED and ES frames or neither (got ED={ed}, ES={es})")
    if given:
        bad = [(k, v) for k, v in (("ED", ed), ("ES", es)) if not 0 <= int(v) < n]
        if bad:
            raise DataError(None, f"{subject}: {bad[0][0]} frame {bad[0][1]} is outside the cine's {n} frames "
                                  f"(0-based frame indices)")
        ed, es = int(ed), int(es)
    else:
        ed, es = detect_ed_es(curves["LV_ml"])
    labels = np.asarray(labels_xyzt)
    indices = clinical_indices(labels[..., ed], labels[..., es], spacing)
    return CycleAnalysis(subject, curves, ed, es, "given" if given else "detected", indices)


def cycle_figure(analysis: CycleAnalysis, frame_ms: float | None = None):
    """LV and RV volume over the cycle with ED and ES marked (a matplotlib figure, Agg backend)."""
    from ..experiments.plots import plt

    c = analysis.curves
    x = c["frame"] * frame_ms if frame_ms else c["frame"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    ax.plot(x, c["LV_ml"], "o-", color="tab:red", label="LV")
    ax.plot(x, c["RV_ml"], "s-", color="tab:blue", label="RV")
    for t, name in ((analysis.ed, "ED"), (analysis.es, "ES")):
        xt = t * frame_ms if frame_ms else t
        ax.axvline(xt, color="0.5", ls="--", lw=0.8)
        ax.annotate(name, (xt, ax.get_ylim()[1]), ha="center", va="bottom", fontsize=8)
    ef = analysis.indices.get("LV_EF", float("nan"))
    ax.set(xlabel="time (ms)" if frame_ms else "frame", ylabel="volume (mL)",
           title=f"{analysis.subject}  LVEF {ef:.1f} %  ({analysis.phases_from} ED/ES)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_cycle(analysis: CycleAnalysis, path, frame_ms: float | None = None) -> None:
    """``cycle_figure`` as a PNG file (temporary name, then rename)."""
    from ..atomic import atomic_path
    from ..experiments.plots import plt

    fig = cycle_figure(analysis, frame_ms)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
