"""Clinical indices from 3D label maps: ventricular volumes, stroke volume, ejection fraction, LV mass.

Label maps are (X, Y, Z) arrays in the internal convention (0 background, 1 LV blood pool,
2 LV myocardium, 3 RV blood pool); spacing is ``(sx, sy, sz)`` in mm, with ``sz`` the
distance between short-axis slice centres (volume = voxel count x voxel volume, the
"summation of discs" rule used for cine MR).

* EDV / ESV: blood-pool volume at end-diastole / end-systole (mL);
* SV = EDV - ESV (mL); EF = 100 x SV / EDV (%), NaN when EDV is 0;
* LV mass = myocardial volume at ED x 1.05 g/mL (myocardial density), in g.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cardiossp.data.labels import CLASS_NAMES, LV, MYO, RV
from cardiossp.errors import DataError

MYOCARDIAL_DENSITY_G_PER_ML = 1.05


def _voxel_ml(spacing: Sequence[float]) -> float:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise DataError(None, f"spacing must be 3 positive finite numbers (sx, sy, sz) in mm; got {spacing}")
    return sp[0] * sp[1] * sp[2] / 1000.0  # mm^3 -> mL


def volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volume of each structure in mL: ``{"LV": ..., "MYO": ..., "RV": ...}``.

    ``labels``: (X, Y, Z) internal labels; volume = voxel count x sx*sy*sz / 1000.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise DataError(None, f"label map must be 3D (X, Y, Z); got shape {labels.shape}")
    vox = _voxel_ml(spacing)
    return {CLASS_NAMES[c]: int(np.count_nonzero(labels == c)) * vox for c in (LV, MYO, RV)}


def _ef(edv: float, esv: float) -> float:
    return 100.0 * (edv - esv) / edv if edv > 0 else float("nan")


def clinical_indices(ed_labels: np.ndarray, es_labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """LV/RV EDV, ESV, SV (mL), EF (%) and LV mass (g) from the ED and ES label maps.

    Keys: LV_EDV, LV_ESV, LV_SV, LV_EF, RV_EDV, RV_ESV, RV_SV, RV_EF, LV_mass_g.
    EF is NaN (silently) when EDV is 0. Mass uses the ED myocardium only.
    """
    ed, es = volumes_ml(ed_labels, spacing), volumes_ml(es_labels, spacing)
    out: dict[str, float] = {}
    for name in ("LV", "RV"):
        edv, esv = ed[name], es[name]
        out[f"{name}_EDV"] = edv
        out[f"{name}_ESV"] = esv
        out[f"{name}_SV"] = edv - esv
        out[f"{name}_EF"] = _ef(edv, esv)
    out["LV_mass_g"] = ed["MYO"] * MYOCARDIAL_DENSITY_G_PER_ML
    return out


def index_errors(pred: Mapping[str, float], gt: Mapping[str, float]) -> dict[str, float]:
    """Signed (pred - gt) and absolute error per index: ``{K}_error`` and ``{K}_abs_error``.

    Every key of ``gt`` must be in ``pred``; NaN in either gives NaN errors.
    """
    missing = [k for k in gt if k not in pred]
    if missing:
        raise DataError(None, f"predicted indices lack {missing} (have {sorted(pred)})")
    out: dict[str, float] = {}
    for k, g in gt.items():
        err = float(pred[k]) - float(g)
        out[f"{k}_error"] = err
        out[f"{k}_abs_error"] = abs(err)
    return out
