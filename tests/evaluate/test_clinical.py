"""Clinical indices from hand-built label maps (internal labels 1 LV, 2 MYO, 3 RV)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cardiossp.errors import DataError
from cardiossp.evaluate import clinical_indices, index_errors, volumes_ml


def labelled(counts: dict[int, int], shape=(30, 30, 10), seed: int = 0) -> np.ndarray:
    """A label map holding exactly ``counts[label]`` voxels of each label, at random places."""
    flat = np.zeros(int(np.prod(shape)), np.uint8)
    assert sum(counts.values()) <= flat.size
    idx = np.random.default_rng(seed).permutation(flat.size)
    start = 0
    for label, n in counts.items():
        flat[idx[start : start + n]] = label
        start += n
    return flat.reshape(shape)


def test_volumes_are_voxel_count_times_voxel_volume():
    sp = (1.25, 1.5, 8.0)  # 15 mm^3 per voxel
    lab = labelled({1: 123, 2: 77, 3: 301})
    v = volumes_ml(lab, sp)
    assert set(v) == {"LV", "MYO", "RV"}
    assert v["LV"] == pytest.approx(123 * 15.0 / 1000)
    assert v["MYO"] == pytest.approx(77 * 15.0 / 1000)
    assert v["RV"] == pytest.approx(301 * 15.0 / 1000)
    # doubling the slice spacing doubles every volume
    v2 = volumes_ml(lab, (1.25, 1.5, 16.0))
    assert all(v2[k] == pytest.approx(2 * v[k]) for k in v)


def test_indices_of_a_known_pair():
    sp = (1.0, 1.0, 10.0)  # 0.01 mL per voxel
    ed = labelled({1: 1500, 2: 1000, 3: 1800}, seed=1)  # LV 15 mL, MYO 10 mL, RV 18 mL
    es = labelled({1: 600, 2: 1300, 3: 900}, seed=2)  # LV 6 mL, MYO 13 mL, RV 9 mL
    r = clinical_indices(ed, es, sp)
    assert r["LV_EDV"] == pytest.approx(15.0) and r["LV_ESV"] == pytest.approx(6.0)
    assert r["LV_SV"] == pytest.approx(9.0)
    assert r["LV_EF"] == pytest.approx(60.0)
    assert r["RV_EDV"] == pytest.approx(18.0) and r["RV_ESV"] == pytest.approx(9.0)
    assert r["RV_SV"] == pytest.approx(9.0) and r["RV_EF"] == pytest.approx(50.0)
    # mass from the ED myocardium (10 mL), not the ES one (13 mL)
    assert r["LV_mass_g"] == pytest.approx(10.0 * 1.05)
    assert set(r) == {
        "LV_EDV", "LV_ESV", "LV_SV", "LV_EF", "RV_EDV", "RV_ESV", "RV_SV", "RV_EF", "LV_mass_g",
    }  # fmt: skip


def test_zero_edv_gives_nan_ef_without_warnings():
    ed = labelled({1: 50, 2: 40})  # no RV at all
    es = labelled({1: 20, 2: 40}, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = clinical_indices(ed, es, (1.0, 1.0, 1.0))
        assert math.isnan(r["RV_EF"]) and r["RV_EDV"] == 0.0 and r["RV_SV"] == 0.0
        assert r["LV_EF"] == pytest.approx(60.0)
        for _ in range(100):  # many subjects, still not a single warning
            clinical_indices(es * 0, es * 0, (1.0, 1.0, 1.0))


def test_index_errors_signed_and_absolute():
    gt = {"LV_EDV": 150.0, "LV_EF": 60.0, "RV_EF": float("nan")}
    pred = {"LV_EDV": 140.0, "LV_EF": 63.5, "RV_EF": 50.0, "extra": 1.0}
    e = index_errors(pred, gt)
    assert e["LV_EDV_error"] == pytest.approx(-10.0) and e["LV_EDV_abs_error"] == pytest.approx(10.0)
    assert e["LV_EF_error"] == pytest.approx(3.5) and e["LV_EF_abs_error"] == pytest.approx(3.5)
    assert math.isnan(e["RV_EF_error"]) and math.isnan(e["RV_EF_abs_error"])
    assert "extra_error" not in e and len(e) == 6
    with pytest.raises(DataError, match="LV_EF"):
        index_errors({"LV_EDV": 1.0}, gt)


def test_index_errors_on_real_indices():
    sp = (1.2, 1.2, 8.0)
    ed, es = labelled({1: 900, 2: 700, 3: 1000}, seed=4), labelled({1: 400, 2: 800, 3: 500}, seed=5)
    pred_ed = labelled({1: 1000, 2: 700, 3: 1000}, seed=6)
    gt_idx, pred_idx = clinical_indices(ed, es, sp), clinical_indices(pred_ed, es, sp)
    e = index_errors(pred_idx, gt_idx)
    voxel_ml = 1.2 * 1.2 * 8.0 / 1000
    assert e["LV_EDV_error"] == pytest.approx(100 * voxel_ml)
    assert e["LV_ESV_error"] == pytest.approx(0.0)
    assert e["LV_EF_error"] == pytest.approx(100 * (600 / 1000 - 500 / 900))


def test_bad_input_raises():
    lab = labelled({1: 10})
    with pytest.raises(DataError, match="spacing"):
        volumes_ml(lab, (1.0, -1.0, 1.0))
    with pytest.raises(DataError, match="spacing"):
        volumes_ml(lab, (1.0, 1.0))
    with pytest.raises(DataError, match="3D"):
        volumes_ml(lab[..., 0], (1.0, 1.0, 1.0))
