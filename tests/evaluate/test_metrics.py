"""Metrics on 3D label maps (internal labels 1 LV, 2 MYO, 3 RV), checked by hand and against
slow brute-force references (all surface-point pairs, numpy)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cardiossp.data.labels import DATASET_LABEL_MAPS, map_labels
from cardiossp.errors import DataError
from cardiossp.evaluate import assd, dice_3d, evaluate_case, hd95, mean_contour_distance, surface_distances


# ---------------------------------------------------------------- brute-force references
def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask or outside the array."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def _directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """For each surface point of a, the distance (mm) to the nearest surface point of b (all pairs)."""
    pa = np.argwhere(_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(_surface(b)) * np.asarray(spacing, float)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(1)


def ref_hd95(a, b, spacing):
    return max(np.percentile(_directed(a, b, spacing), 95), np.percentile(_directed(b, a, spacing), 95))


def ref_assd(a, b, spacing):
    return np.concatenate([_directed(a, b, spacing), _directed(b, a, spacing)]).mean()


def ref_mcd(a, b, spacing):
    vals = [
        0.5 * (_directed(a[..., z], b[..., z], spacing[:2]).mean()
               + _directed(b[..., z], a[..., z], spacing[:2]).mean())
        for z in range(a.shape[2])
        if a[..., z].any() and b[..., z].any()
    ]
    return np.mean(vals) if vals else math.nan


def ref_dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def blobs(seed: int, shape=(14, 12, 6)) -> np.ndarray:
    """Random smooth label map with labels 0..3."""
    f = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=(2, 2, 1))
    f = (f - f.mean()) / f.std()
    return np.digitize(f, [0.2, 0.7, 1.3]).astype(np.uint8)


# ---------------------------------------------------------------- hand-computed cases
def flat_cube_pair(shift_x: int = 1):
    gt = np.zeros((16, 14, 4), np.uint8)
    gt[2:12, 2:12, 1:3] = 1  # 10 x 10 x 2 voxels
    pred = np.roll(gt, shift_x, axis=0)
    return pred, gt


def test_identical_maps_are_perfect():
    lab = blobs(0)
    r = evaluate_case(lab, lab, (1.3, 0.9, 5.0))
    for name in ("LV", "MYO", "RV"):
        assert r[f"dice_{name}"] == 1.0
        assert r[f"hd95_{name}"] == 0.0 and r[f"assd_{name}"] == 0.0 and r[f"mcd_{name}"] == 0.0
    assert hd95(lab, lab, 2, (1, 1, 1)) == 0.0 and assd(lab, lab, 2, (1, 1, 1)) == 0.0
    assert r["dice_mean"] == 1.0


def test_cube_shifted_one_voxel_along_x():
    pred, gt = flat_cube_pair()
    sx, sy, sz = 0.7, 1.2, 3.0
    # overlap 9 x 10 x 2 = 180 of 200 + 200 voxels
    assert dice_3d(pred, gt, 1) == pytest.approx(2 * 180 / 400)
    # 2 voxels thick: every voxel is surface; 20 of 200 per side are sx away, the rest 0
    assert hd95(pred, gt, 1, (sx, sy, sz)) == pytest.approx(sx, rel=1e-6)
    assert assd(pred, gt, 1, (sx, sy, sz)) == pytest.approx(40 * sx / 400, rel=1e-6)
    # per slice: 36 contour pixels each side, 18 of them sx away (sy > sx), the rest 0
    assert mean_contour_distance(pred, gt, 1, (sx, sy, sz)) == pytest.approx(0.5 * sx)


def test_spacing_along_z_only_changes_z_distances():
    pred, gt = flat_cube_pair()
    a = evaluate_case(pred, gt, (0.7, 1.2, 3.0), classes=(1,))
    b = evaluate_case(pred, gt, (0.7, 1.2, 6.0), classes=(1,))
    for k in ("dice_LV", "hd95_LV", "assd_LV", "mcd_LV"):
        assert a[k] == pytest.approx(b[k])
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:8, 2:8, 2:8] = 1
    pred = np.roll(gt, 1, axis=2)  # shift along z: top layer sz away, interior bottom layer sz away
    for sz in (1.0, 2.0):
        sp = (3.0, 3.0, sz)
        assert hd95(pred, gt, 1, sp) == pytest.approx(sz, rel=1e-6)
        assert assd(pred, gt, 1, sp) == pytest.approx(ref_assd(pred == 1, gt == 1, sp), rel=1e-6)
        assert mean_contour_distance(pred, gt, 1, sp) == 0.0  # shared slices are identical
    assert assd(pred, gt, 1, (3, 3, 2)) == pytest.approx(2 * assd(pred, gt, 1, (3, 3, 1)), rel=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_against_brute_force_on_random_blobs(seed):
    gt = blobs(seed)
    pred = blobs(seed + 100)
    pred[: 3] = gt[: 3]  # partial agreement
    sp = (1.25, 0.8, 4.5)
    r = evaluate_case(pred, gt, sp)
    for c, name in ((1, "LV"), (2, "MYO"), (3, "RV")):
        a, b = pred == c, gt == c
        assert a.any() and b.any()
        assert dice_3d(pred, gt, c) == pytest.approx(ref_dice(a, b))
        assert hd95(pred, gt, c, sp) == pytest.approx(ref_hd95(a, b, sp), rel=1e-5)
        assert assd(pred, gt, c, sp) == pytest.approx(ref_assd(a, b, sp), rel=1e-5)
        assert mean_contour_distance(pred, gt, c, sp) == pytest.approx(ref_mcd(a, b, sp), rel=1e-9)
        # evaluate_case's one-pass fast path matches MONAI's compute_* functions
        assert r[f"hd95_{name}"] == pytest.approx(hd95(pred, gt, c, sp), rel=1e-5)
        assert r[f"assd_{name}"] == pytest.approx(assd(pred, gt, c, sp), rel=1e-5)
        assert r[f"dice_{name}"] == pytest.approx(ref_dice(a, b))
        d_pg, d_gp = surface_distances(pred, gt, c, sp)
        np.testing.assert_allclose(np.sort(d_pg), np.sort(_directed(a, b, sp)), rtol=1e-5)
        np.testing.assert_allclose(np.sort(d_gp), np.sort(_directed(b, a, sp)), rtol=1e-5)
    assert r["dice_mean"] == pytest.approx(np.mean([r["dice_LV"], r["dice_MYO"], r["dice_RV"]]))


def test_cropping_and_array_border_do_not_change_results():
    pred, gt = blobs(4), blobs(5)  # structures touch the array border
    sp = (1.1, 1.4, 6.0)
    r = evaluate_case(pred, gt, sp)
    big = evaluate_case(*(np.pad(x, ((7, 3), (2, 9), (4, 1))) for x in (pred, gt)), sp)
    for k, v in r.items():
        assert big[k] == pytest.approx(v, rel=1e-6), k
    assert r["hd95_MYO"] == pytest.approx(ref_hd95(pred == 2, gt == 2, sp), rel=1e-5)


def test_mcd_uses_only_slices_with_both_structures():
    pred, gt = flat_cube_pair()
    sp = (0.7, 1.2, 3.0)
    before, before_3d = mean_contour_distance(pred, gt, 1, sp), assd(pred, gt, 1, sp)
    pred[5:8, 5:8, 3] = 1  # extra prediction on a slice where gt has nothing
    assert mean_contour_distance(pred, gt, 1, sp) == pytest.approx(before)
    after_3d = assd(pred, gt, 1, sp)  # while the 3D distances see it
    assert after_3d > 2 * before_3d
    assert after_3d == pytest.approx(ref_assd(pred == 1, gt == 1, sp), rel=1e-6)


def test_empty_structure_conventions_without_warnings():
    gt = blobs(6)
    sp = (1.0, 1.0, 5.0)
    empty = np.zeros_like(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # both empty -> NaN everywhere (nnU-Net convention)
        for fn in (hd95, assd, mean_contour_distance):
            assert math.isnan(fn(empty, empty, 1, sp))
        assert math.isnan(dice_3d(empty, empty, 1))
        # one empty -> Dice 0, distances NaN
        assert dice_3d(empty, gt, 1) == 0.0 and dice_3d(gt, empty, 1) == 0.0
        for fn in (hd95, assd, mean_contour_distance):
            assert math.isnan(fn(empty, gt, 1, sp)) and math.isnan(fn(gt, empty, 1, sp))
        assert surface_distances(gt, empty, 1, sp) is None
        # RV absent in both: excluded from dice_mean
        pred = gt.copy()
        pred[gt == 3] = 0
        no_rv = pred.copy()
        pred[:2] = 0
        r = evaluate_case(pred, no_rv, sp)
        assert math.isnan(r["dice_RV"]) and math.isnan(r["hd95_RV"]) and math.isnan(r["mcd_RV"])
        assert r["dice_mean"] == pytest.approx((r["dice_LV"] + r["dice_MYO"]) / 2)
        r = evaluate_case(empty, empty, sp)
        assert all(math.isnan(v) for v in r.values())


def test_bad_input_raises_clear_errors():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(DataError, match="differs"):
        dice_3d(a, np.zeros((4, 4, 2)), 1)
    with pytest.raises(DataError, match="3D"):
        hd95(a[..., 0], a[..., 0], 1, (1, 1, 1))
    with pytest.raises(DataError, match="spacing"):
        evaluate_case(a, a, (1.0, 0.0, 2.0))
    with pytest.raises(DataError, match="spacing"):
        assd(a, a, 1, (1.0, 1.0))


def test_real_acdc_case_is_sane(acdc_root):
    nib = pytest.importorskip("nibabel")
    img = nib.load(acdc_root / "patient001" / "patient001_frame01_gt.nii.gz")
    gt = map_labels(np.asarray(img.dataobj), DATASET_LABEL_MAPS["acdc"], "acdc")
    sp = tuple(float(s) for s in img.header.get_zooms()[:3])
    pred = np.roll(gt, 2, axis=0)  # two-voxel shift along x
    r = evaluate_case(pred, gt, sp)
    for name in ("LV", "MYO", "RV"):
        assert 0.3 < r[f"dice_{name}"] < 1.0
        assert r[f"hd95_{name}"] == pytest.approx(2 * sp[0], rel=0.05)  # sy, sz larger or shift-dominated
        assert 0 < r[f"assd_{name}"] <= r[f"hd95_{name}"]
        assert 0 < r[f"mcd_{name}"] <= 2 * sp[0] + 1e-6
