"""The synthetic phantom: determinism, label geometry, anatomy, beat, contrast, reader and NIfTI export."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cardiossp.data.labels import LV, MYO, RV
from cardiossp.data.readers import READERS, get_reader, iter_subjects
from cardiossp.data.readers.phantom import (
    make_phantom_subject,
    write_phantom_config,
    write_phantom_dataset,
)
from cardiossp.errors import DataError

SMALL = dict(size=64, n_slices=6, n_frames=8)
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood within each slice


def dilate(mask: np.ndarray) -> np.ndarray:
    """1-pixel in-plane dilation of an (X, Y, Z) mask."""
    return ndimage.binary_dilation(mask, structure=IN_PLANE)


def volume(lab: np.ndarray, cls: int) -> int:
    return int((lab == cls).sum())


@pytest.fixture(scope="module")
def subjects():
    return [make_phantom_subject(i, seed=3, **SMALL) for i in range(8)]


def test_deterministic_by_seed_and_index():
    a, b = make_phantom_subject(4, seed=11, **SMALL), make_phantom_subject(4, seed=11, **SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.labels.keys() == b.labels.keys()
    for t in a.labels:
        np.testing.assert_array_equal(a.labels[t], b.labels[t])
    c = make_phantom_subject(4, seed=12, **SMALL)
    d = make_phantom_subject(5, seed=11, **SMALL, vendor=a.vendor, pathology=a.pathology)
    for other in (c, d):
        assert not np.array_equal(a.image, other.image)
        assert not np.array_equal(a.labels[0], other.labels[0])


def test_record_fields_and_shapes(subjects):
    for s in subjects:
        assert s.shape == (64, 64, 6, 8) and s.image.dtype == np.float32 and np.isfinite(s.image).all()
        assert s.dataset == "phantom" and s.vendor in "ABCD" and s.centre and s.pathology in ("NOR", "DCM", "HCM")
        assert s.ed_frame == 0 and 1 <= s.es_frame < 8 and abs(s.es_frame - 0.35 * 8) <= 1
        assert set(s.labels) == {0, s.es_frame}
        for lab in s.labels.values():
            assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, LV, MYO, RV}
    assert {s.vendor for s in subjects} == set("ABCD")


def test_affine_is_oblique_short_axis_pointing_base_to_apex():
    s = make_phantom_subject(2, spacing=(1.25, 1.4, 10.0), **SMALL)
    rot = s.affine[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(rot, axis=0), [1.25, 1.4, 10.0], rtol=1e-9)
    dirs = rot / np.linalg.norm(rot, axis=0)
    np.testing.assert_allclose(dirs.T @ dirs, np.eye(3), atol=1e-9)  # orthogonal axes
    lai = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3)  # RAS: left, anterior, inferior
    assert dirs[:, 2] @ lai > 0.9
    assert np.abs(dirs).max(axis=0).min() < 0.95  # oblique: no axis aligned with a scanner axis
    assert s.spacing == (1.25, 1.4, 10.0)


def test_label_geometry(subjects):
    for s in subjects:
        for lab in s.labels.values():
            lv, myo, rv, bg = (lab == LV), (lab == MYO), (lab == RV), (lab == 0)
            ring = dilate(lv) & ~lv
            assert myo[ring].mean() > 0.99  # LV is enclosed by the myocardium
            assert not (dilate(rv) & lv).any()  # RV never touches the LV cavity ...
            assert (dilate(rv) & myo).sum() > 0  # ... it is attached to the myocardium
            assert not (dilate(lv) & bg).any()
            # every labeled slice holds one connected LV, and the RV sits on one side of it
            for z in range(lab.shape[2]):
                assert ndimage.label(lv[:, :, z])[1] == 1
                if rv[:, :, z].any():
                    assert ndimage.label(rv[:, :, z])[1] == 1


def test_base_to_apex_narrowing(subjects):
    for s in subjects:
        lab = s.labels[0]
        lv_area = (lab == LV).sum(axis=(0, 1))
        rv_area = (lab == RV).sum(axis=(0, 1))
        assert (np.diff(lv_area) < 0).all(), lv_area  # slice 0 = base, largest
        assert (np.diff(rv_area) <= 0).all() and rv_area[0] > 0 and rv_area[-1] == 0, rv_area


def test_beat_ejection_fraction_and_wall_thickening(subjects):
    seen = set()
    for s in subjects:
        ed, es = s.labels[0], s.labels[s.es_frame]
        ef = 1 - volume(es, LV) / volume(ed, LV)
        seen.add(s.pathology)
        assert abs(ef - s.extra["ef_target"]) < 0.03
        if s.pathology == "NOR":
            assert 0.40 < ef < 0.75
        if s.pathology == "DCM":
            assert ef < 0.40
        assert volume(es, RV) < volume(ed, RV)
        # thickness from areas on the mid slice: r_epi - r_endo, with the myocardial area conserved
        z = s.n_slices // 2
        thick = [np.sqrt((lab[:, :, z] > 0).sum() - (lab[:, :, z] == RV).sum()) / np.sqrt(np.pi)
                 - np.sqrt((lab[:, :, z] == LV).sum() / np.pi) for lab in (ed, es)]
        assert thick[1] > thick[0] + (0.5 if s.pathology != "DCM" else 0.1)  # DCM: little thickening
    assert {"NOR", "DCM"} <= seen


def test_image_beats_with_labels(subjects):
    """Inside the ED LV disc, the bright (blood) pixel count is smallest at the ES frame."""
    s = subjects[0]
    z = 1
    disc = s.labels[0][:, :, z] == LV
    img = s.image[:, :, z, :]
    blood, muscle = img[:, :, 0][disc].mean(), img[:, :, s.es_frame][s.labels[s.es_frame][:, :, z] == MYO].mean()
    bright = ((img > (blood + muscle) / 2) & disc[..., None]).sum(axis=(0, 1))
    assert int(np.argmin(bright)) == s.es_frame
    assert bright[0] > 1.5 * bright[s.es_frame]


def test_intensities_and_vendor_contrast():
    means = {}
    for vendor in "ABCD":
        s = make_phantom_subject(1, seed=5, vendor=vendor, pathology="NOR", **SMALL)
        for lab, t in ((s.labels[0], 0), (s.labels[s.es_frame], s.es_frame)):
            img = s.image[..., t]
            lv, myo, rv = img[lab == LV].mean(), img[lab == MYO].mean(), img[lab == RV].mean()
            assert lv > 1.5 * myo and rv > 1.5 * myo
        means[vendor] = float(s.image[s.labels[0] == LV, ...].mean())
    # same anatomy, vendor-specific intensity scale (A 1000, B 300, C 2500, D 150)
    assert means["C"] > means["A"] > means["B"] > means["D"]


def test_unlabeled_subject_has_no_labels():
    s = make_phantom_subject(0, labeled=False, **SMALL)
    assert s.labels == {} and not s.is_labeled
    assert s.ed_frame == 0 and s.es_frame is not None
    np.testing.assert_array_equal(s.image, make_phantom_subject(0, **SMALL).image)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_frames"):
        make_phantom_subject(0, n_frames=1)
    with pytest.raises(ValueError, match="vendor"):
        make_phantom_subject(0, vendor="Z")



def test_reader_defaults(tmp_path):
    assert "phantom" in READERS
    reader = get_reader("phantom")
    ids = reader.subject_ids(tmp_path)
    assert ids == [f"phantom{i:03d}" for i in range(12)]
    s = reader.load(tmp_path, "phantom003")
    np.testing.assert_array_equal(s.image, make_phantom_subject(3, seed=0).image)
    assert s.is_labeled and s.source == str(tmp_path)
    assert not reader.load(tmp_path, "phantom011").is_labeled and reader.load(tmp_path, "phantom009").is_labeled
    with pytest.raises(DataError, match="phantom012"):
        reader.load(tmp_path, "phantom012")
    with pytest.raises(DataError, match="not a folder"):
        reader.subject_ids(tmp_path / "missing")


def test_reader_with_config(tmp_path):
    write_phantom_config(tmp_path, n_subjects=3, n_unlabeled=1, seed=7, size=48, n_slices=4, n_frames=5)
    subs = list(iter_subjects("phantom", tmp_path))
    assert [s.subject_id for s in subs] == ["phantom000", "phantom001", "phantom002"]
    assert [s.is_labeled for s in subs] == [True, True, False]
    assert subs[0].shape == (48, 48, 4, 5)
    np.testing.assert_array_equal(subs[1].image, make_phantom_subject(1, seed=7, size=48, n_slices=4, n_frames=5).image)
    (tmp_path / "phantom.json").write_text(json.dumps({"n_subjects": 2, "colour": "red"}))
    with pytest.raises(DataError, match="phantom.json.*colour"):
        get_reader("phantom").subject_ids(tmp_path)
    with pytest.raises(DataError, match="n_unlabeled"):
        write_phantom_config(tmp_path / "other", n_subjects=2, n_unlabeled=3)
    assert not (tmp_path / "other" / "phantom.json").exists()
    (tmp_path / "phantom.json").write_text(json.dumps({"size": 8}))
    with pytest.raises(DataError, match="size >= 32"):
        get_reader("phantom").subject_ids(tmp_path)
    (tmp_path / "phantom.json").write_text("{not json")
    with pytest.raises(DataError, match="phantom.json"):
        get_reader("phantom").subject_ids(tmp_path)


def test_write_nifti_dataset(tmp_path):
    kw = dict(size=48, n_slices=4, n_frames=6, spacing=(1.5, 1.5, 8.0))
    out = write_phantom_dataset(tmp_path / "ds", n_subjects=3, n_unlabeled=1, seed=2, **kw)
    write_phantom_dataset(tmp_path / "ds", n_subjects=3, n_unlabeled=1, seed=2, **kw)  # rewriting is fine
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())  # no temporary files left
    assert files == ["dataset.json", "imagesTr/phantom000_0000.nii.gz", "imagesTr/phantom001_0000.nii.gz",
                     "imagesTs/phantom002_0000.nii.gz", "labelsTr/phantom000.nii.gz", "labelsTr/phantom001.nii.gz",
                     "metadata.csv"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    assert meta["channel_names"] == {"0": "cineMRI"} and meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    table = pd.read_csv(out / "metadata.csv")
    assert list(table.columns) == ["subject", "vendor", "centre", "pathology", "ed_frame", "es_frame"]
    assert list(table.subject) == ["phantom000", "phantom001", "phantom002"]

    for i in range(3):
        ref = make_phantom_subject(i, seed=2, labeled=i < 2, **kw)
        folder = "imagesTr" if i < 2 else "imagesTs"
        img = nib.load(str(out / folder / f"phantom{i:03d}_0000.nii.gz"))
        assert img.shape == (48, 48, 4, 6)
        np.testing.assert_allclose(img.header.get_zooms()[:3], (1.5, 1.5, 8.0), rtol=1e-6)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(img.dataobj), ref.image)
        assert table.es_frame[i] == ref.es_frame and table.vendor[i] == ref.vendor
        if i < 2:
            lab = np.asarray(nib.load(str(out / "labelsTr" / f"phantom{i:03d}.nii.gz")).dataobj)
            assert lab.shape == (48, 48, 4, 6)
            labeled_frames = [t for t in range(6) if lab[..., t].any()]
            assert labeled_frames == sorted(ref.labels)
            for t in labeled_frames:
                np.testing.assert_array_equal(lab[..., t], ref.labels[t])


def test_nifti_reader_loads_written_dataset(tmp_path):
    if "nifti" not in READERS:
        pytest.skip("the generic 'nifti' reader (readers/nifti_folder.py) is not registered yet")
    out = write_phantom_dataset(tmp_path, n_subjects=3, n_unlabeled=1, seed=2, size=48, n_slices=4, n_frames=6)
    subs = {s.subject_id: s for s in iter_subjects("nifti", out)}
    assert sorted(subs) == ["phantom000", "phantom001", "phantom002"]
    for i, sid in enumerate(sorted(subs)):
        ref = make_phantom_subject(i, seed=2, labeled=i < 2, size=48, n_slices=4, n_frames=6)
        s = subs[sid]
        np.testing.assert_array_equal(s.image, ref.image)
        np.testing.assert_allclose(s.spacing, ref.spacing, rtol=1e-6)
        meta = (s.ed_frame, s.es_frame, s.vendor, s.centre, s.pathology)
        assert meta == (ref.ed_frame, ref.es_frame, ref.vendor, ref.centre, ref.pathology)
        assert sorted(s.labels) == sorted(ref.labels)
        for t in ref.labels:
            np.testing.assert_array_equal(s.labels[t], ref.labels[t])
