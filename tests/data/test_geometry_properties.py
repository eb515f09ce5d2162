"""Property tests (hypothesis) of the geometry the cache and predict rely on.

1. Resampling labels to the cache grid and back (``labels_to_slices`` -> ``labels_to_native``, the
   inverse predict and evaluate use) keeps every structure's volume and place.
2. Any affine and spacing the NIfTI reader accepts round-trips through ``prepare``: the cached
   geometry is the file's, the native labels are stored exactly, the cached labels map back onto
   the native grid, and ``predict``'s writer puts them back under the input's affine.

Tolerances. Each of the two resamplings (bilinear on one-hot maps, antialiased when shrinking,
arg-max) moves a class boundary by at most about half a pixel of the coarser of the two grids,
``h = max(native in-plane spacing, target spacing)``. A structure's area per slice therefore
changes by at most about (contour length) x h / 2 per step; we allow ``0.5 x perimeter x h`` per
class for the round trip (measured worst over 300 random cases: 0.16), with the perimeter taken
from the native mask's border pixels (an over-estimate of the contour by up to ~1.4). The LV disk's
centroid may move by at most ``h / 2`` (measured worst: 0.26 h; the resampling is unbiased, a
half-pixel offset error in the inverse would show here). Arrays are small and ``max_examples``
is 20, so the whole file runs in seconds.

Label convention: 0 background, 1 LV, 2 MYO, 3 RV (internal).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cardiossp.data.cache import prepare
from cardiossp.data.preprocess import labels_to_native, labels_to_slices, make_geometry
from cardiossp.data.slices import SliceCache
from cardiossp.predict import _write_labels

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def heart_labels(shape, spacing, centre, r_lv, wall):
    """(X, Y, Z) internal labels: an LV disk (radius ``r_lv`` mm) in a MYO ring, an RV ellipse beside."""
    nx, ny, nz = shape
    x, y = np.meshgrid((np.arange(nx) + 0.5) * spacing[0], (np.arange(ny) + 0.5) * spacing[1], indexing="ij")
    cx, cy = centre
    r = np.hypot(x - cx, y - cy)
    lab = np.zeros((nx, ny), np.uint8)
    lab[r < r_lv + wall] = 2
    lab[r < r_lv] = 1
    rv = ((x - cx + r_lv + wall + 8) / 8) ** 2 + ((y - cy) / (r_lv + 6)) ** 2 < 1
    lab[rv & (lab == 0)] = 3
    return np.repeat(lab[:, :, None], nz, axis=2)


def check_round_trip(native, back, spacing, target):
    """Volumes within 0.5 x perimeter x h per class, LV centroid within h / 2 (see the module docstring)."""
    sx, sy, sz = spacing
    h = max(sx, sy, target)
    assert back.shape == native.shape
    for c in (1, 2, 3):
        m = native == c
        if not m.any():
            continue
        border = m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3, 1), bool))
        tol = 0.5 * border.sum() * np.sqrt(sx * sy) * h * sz  # mm^3
        vol, vol_back = m.sum() * sx * sy * sz, (back == c).sum() * sx * sy * sz
        assert abs(vol_back - vol) <= tol, f"class {c}: {vol:.0f} -> {vol_back:.0f} mm^3 (tolerance {tol:.0f})"
    lv, lv_back = native == 1, back == 1
    shift = (np.array(ndimage.center_of_mass(lv_back)) - np.array(ndimage.center_of_mass(lv)))[:2] * [sx, sy]
    assert np.linalg.norm(shift) <= h / 2, f"LV centroid moved {shift} mm (h = {h:.2f})"


case = st.fixed_dictionaries({
    "sx": st.floats(0.6, 2.5), "sy": st.floats(0.6, 2.5), "sz": st.floats(2.0, 10.0),
    "target": st.floats(0.8, 2.0), "fov": st.floats(60.0, 90.0), "nz": st.integers(1, 3),
    "cx": st.floats(0.4, 0.6), "cy": st.floats(0.4, 0.6), "r_lv": st.floats(6.0, 14.0), "wall": st.floats(3.0, 6.0),
})


def build(c):
    spacing = (c["sx"], c["sy"], c["sz"])
    shape = (int(c["fov"] / c["sx"]), int(c["fov"] / c["sy"]), c["nz"])
    lab = heart_labels(shape, spacing, (c["cx"] * c["fov"], c["cy"] * c["fov"]), c["r_lv"], c["wall"])
    # a grid that holds the whole resampled field of view: cropping would remove labels on purpose
    size = int(np.ceil(max(shape[0] * c["sx"], shape[1] * c["sy"]) / c["target"])) + 4
    return spacing, shape, lab, size


@SETTINGS
@given(case)
def test_resample_and_inverse_keep_label_volumes(c):
    spacing, shape, lab, size = build(c)
    geom = make_geometry(shape, spacing, np.eye(4), c["target"], size)
    back = labels_to_native(labels_to_slices(lab, geom), geom)
    check_round_trip(lab, back, spacing, c["target"])


rotation = st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1)


def affine_from(q, spacing, flip, origin):
    """Rotation (unit quaternion ``q``) x diag(spacing) [x flip of the x axis] + origin: a valid scanner affine."""
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing) @ np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    a[:3, 3] = origin
    return a


@SETTINGS
@given(case, rotation, st.booleans(), st.lists(st.floats(-200.0, 200.0), min_size=3, max_size=3))
def test_any_accepted_affine_round_trips_through_the_cache(c, q, flip, origin):
    spacing, shape, lab, size = build(c)
    affine = affine_from(q, spacing, flip, origin)
    rng = np.random.default_rng(0)
    image = (lab * 50.0 + rng.normal(100.0, 10.0, lab.shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp) / "raw"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / "c_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "c.nii.gz")
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 3}}))
        on_disk = nib.load(root / "imagesTr" / "c_0000.nii.gz")  # the affine as the file stores it (float32)

        out = prepare([("nifti", root)], Path(tmp) / "cache", spacing=c["target"], size=size)
        sc = SliceCache(out, verify="hash")
        (key,) = sc.subject_ids()
        geom = sc.geometry(key)
        assert geom.native_shape == shape
        np.testing.assert_allclose(geom.affine, on_disk.affine, rtol=0, atol=1e-9)
        np.testing.assert_allclose(geom.spacing, on_disk.header.get_zooms()[:3], rtol=1e-6)
        np.testing.assert_array_equal(sc.native_labels(key)[0], lab)  # evaluation's ground truth: exact

        back = labels_to_native(np.asarray(sc.label_array(key)[0]), geom)  # the cached labels, mapped back
        check_round_trip(lab, back, geom.spacing, c["target"])

        seg = Path(tmp) / "c_seg.nii.gz"  # predict's writer: the input's grid and affine
        _write_labels(back, on_disk.affine, on_disk.header, on_disk.shape, seg)
        written = nib.load(seg)
        assert written.shape == on_disk.shape
        np.testing.assert_allclose(written.affine, on_disk.affine, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(written.dataobj), back)
