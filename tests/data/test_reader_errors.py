"""Bad input -> a DataError whose message names the file and the problem.

Each test builds a broken copy of a real sample (../shared/data; M&Ms, Campello et al. 2021;
ACDC, Bernard et al. 2018; Sunnybrook, Radau et al. 2009) or a tiny synthetic folder in tmp_path.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest

from cardiossp.data.readers import get_reader, iter_subjects
from cardiossp.errors import DataError

SID = "H1N8S6"  # the smallest M&Ms sample subject


def save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


@pytest.fixture
def mnms_copy(tmp_path, mnms_root):
    """A writable copy of one M&Ms subject (frames layout) + subjects.csv; returns (root, subject folder)."""
    root = tmp_path / "mnms"
    shutil.copytree(mnms_root / SID, root / SID)
    (root / "subjects.csv").write_text(f"SubjectID,Vendor,Centre\n{SID},A,1\n")
    return root, root / SID


def load_nii(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def expect_error(root, reader="mnms", subject=SID, *fragments):
    with pytest.raises(DataError) as info:
        get_reader(reader).load(root, subject)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return info.value


def test_missing_gt_means_unlabeled_not_error(mnms_copy):
    root, d = mnms_copy
    (d / f"{SID}_sa_ES_gt.nii.gz").unlink()
    s = get_reader("mnms").load(root, SID)
    assert set(s.labels) == {0} and s.shape[3] == 2
    (d / f"{SID}_sa_ED_gt.nii.gz").unlink()
    s = get_reader("mnms").load(root, SID)
    assert s.labels == {} and not s.is_labeled and s.vendor == "A"


def test_label_shape_mismatch(mnms_copy):
    root, d = mnms_copy
    gt, aff = load_nii(d / f"{SID}_sa_ED_gt.nii.gz")
    save(d / f"{SID}_sa_ED_gt.nii.gz", gt[:-4], aff)
    err = expect_error(root, "mnms", SID, f"{SID}_sa_ED_gt.nii.gz", "shape")
    assert err.path.name == f"{SID}_sa_ED_gt.nii.gz"


def test_label_affine_mismatch(mnms_copy):
    root, d = mnms_copy
    gt, aff = load_nii(d / f"{SID}_sa_ES_gt.nii.gz")
    aff = aff.copy()
    aff[:3, 3] += 5.0
    save(d / f"{SID}_sa_ES_gt.nii.gz", gt, aff)
    expect_error(root, "mnms", SID, f"{SID}_sa_ES_gt.nii.gz", "affine")


def test_label_value_outside_map(mnms_copy):
    root, d = mnms_copy
    gt, aff = load_nii(d / f"{SID}_sa_ED_gt.nii.gz")
    gt = gt.copy()
    gt[0, 0, 0] = 7
    save(d / f"{SID}_sa_ED_gt.nii.gz", gt, aff)
    expect_error(root, "mnms", SID, f"{SID}_sa_ED_gt.nii.gz", "[7]")


def test_nan_image(mnms_copy):
    root, d = mnms_copy
    im, aff = load_nii(d / f"{SID}_sa_ES.nii.gz")
    im = im.astype(np.float32)
    im[3, 4, 1] = np.nan
    save(d / f"{SID}_sa_ES.nii.gz", im, aff)
    expect_error(root, "mnms", SID, f"{SID}_sa_ES.nii.gz", "NaN")


def test_truncated_nii_gz(mnms_copy):
    root, d = mnms_copy
    p = d / f"{SID}_sa_ED.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    expect_error(root, "mnms", SID, f"{SID}_sa_ED.nii.gz", "truncated")


def test_zero_voxel_spacing(mnms_copy):
    """nibabel turns a zero pixdim into 1 on load without an error: the reader must not."""
    root, d = mnms_copy
    p = d / f"{SID}_sa_ED.nii.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
    p.write_bytes(gzip.compress(bytes(raw)))
    expect_error(root, "mnms", SID, f"{SID}_sa_ED.nii.gz", "spacing")


def test_2d_file_where_3d_expected(mnms_copy):
    root, d = mnms_copy
    im, aff = load_nii(d / f"{SID}_sa_ED.nii.gz")
    save(d / f"{SID}_sa_ED.nii.gz", im[:, :, 0], aff)
    expect_error(root, "mnms", SID, f"{SID}_sa_ED.nii.gz", "expected a 3D image")


def test_mnms_es_frame_differs_from_ed(mnms_copy):
    root, d = mnms_copy
    im, aff = load_nii(d / f"{SID}_sa_ES.nii.gz")
    save(d / f"{SID}_sa_ES.nii.gz", im[:, :, :-1], aff)
    expect_error(root, "mnms", SID, f"{SID}_sa_ES.nii.gz", "differs from the ED frame")


@pytest.mark.parametrize("reader", ["acdc", "mnms", "mnms2", "nifti", "sunnybrook"])
def test_empty_folder(tmp_path, reader):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        next(iter_subjects(reader, empty))
    assert info.value.path == empty and "no subjects" in str(info.value) and str(empty) in str(info.value)


def test_missing_info_cfg(tmp_path, acdc_root):
    shutil.copytree(acdc_root / "patient001", tmp_path / "patient001")
    (tmp_path / "patient001/Info.cfg").unlink()
    err = expect_error(tmp_path, "acdc", "patient001", "Info.cfg", "not found")
    assert err.path.name == "Info.cfg"


# --- M&Ms original layout: CSV vs labels
def write_mnms_original(root, labeled=(1, 3), csv_frames=("1", "3")):
    rng = np.random.default_rng(0)
    img = rng.random((12, 10, 3, 4)).astype(np.float32)
    gt = np.zeros(img.shape, np.uint8)
    for t in labeled:
        gt[3:6, 3:6, 1, t] = 1
    save(root / "S1/S1_sa.nii.gz", img, np.eye(4))
    save(root / "S1/S1_sa_gt.nii.gz", gt, np.eye(4))
    (root / "info.csv").write_text(f"External code,Vendor,Centre,ED,ES\nS1,A,1,{csv_frames[0]},{csv_frames[1]}\n")


def test_mnms_csv_frame_without_labels(tmp_path):
    write_mnms_original(tmp_path, labeled=(2, 3))
    expect_error(tmp_path, "mnms", "S1", "S1_sa_gt.nii.gz", "frame 1", "no labels", "[2, 3]")


def test_mnms_csv_bad_frame_value(tmp_path):
    write_mnms_original(tmp_path, csv_frames=("x", "3"))
    expect_error(tmp_path, "mnms", "S1", "info.csv", "'x'")
    write_mnms_original(tmp_path, csv_frames=("1", "9"))
    expect_error(tmp_path, "mnms", "S1", "info.csv", "frame 9", "4 frames")


# --- M&Ms-2
def test_mnms2_cine_shape_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "001"
    save(d / "001_SA_CINE.nii.gz", rng.random((10, 10, 3, 5)).astype(np.float32), np.eye(4))
    save(d / "001_SA_ED.nii.gz", rng.random((10, 10, 2)).astype(np.float32), np.eye(4))
    save(d / "001_SA_ES.nii.gz", rng.random((10, 10, 3)).astype(np.float32), np.eye(4))
    expect_error(tmp_path, "mnms2", "001", "001_SA_ED.nii.gz", "does not match the cine")


# --- NIfTI folders
def nnunet_case(root, labels_json, image_shape=(8, 8, 2), label_shape=(8, 8, 2), value=1):
    image = np.random.default_rng(0).random(image_shape).astype(np.float32)  # not blank: that is refused
    save(root / "imagesTr/c1_0000.nii.gz", image, np.eye(4))
    lab = np.zeros(label_shape, np.uint8)
    lab[2:4, 2:4, 0] = value
    save(root / "labelsTr/c1.nii.gz", lab, np.eye(4))
    (root / "dataset.json").write_text(json.dumps({"labels": labels_json, "file_ending": ".nii.gz"}))


def test_nnunet_unknown_label_name(tmp_path):
    nnunet_case(tmp_path, {"background": 0, "LV": 1, "aorta": 2})
    expect_error(tmp_path, "nifti", "imagesTr/c1", "dataset.json", "'aorta'")


def test_nnunet_label_value_not_in_dataset_json(tmp_path):
    nnunet_case(tmp_path, {"background": 0, "LV": 1}, value=2)
    expect_error(tmp_path, "nifti", "imagesTr/c1", "c1.nii.gz", "[2]")


def test_nnunet_3d_label_for_4d_image(tmp_path):
    nnunet_case(tmp_path, {"background": 0, "LV": 1}, image_shape=(8, 8, 2, 3))
    expect_error(tmp_path, "nifti", "imagesTr/c1", "c1.nii.gz", "3D label map for a 4D image")


def test_nnunet_4d_label_frame_count_mismatch(tmp_path):
    nnunet_case(tmp_path, {"background": 0, "LV": 1}, image_shape=(8, 8, 2, 3), label_shape=(8, 8, 2, 2))
    expect_error(tmp_path, "nifti", "imagesTr/c1", "c1.nii.gz", "shape")


def test_metadata_frame_beyond_cine(tmp_path):
    save(tmp_path / "s.nii.gz", np.random.default_rng(0).random((6, 6, 2, 4)).astype(np.float32), np.eye(4))
    (tmp_path / "metadata.csv").write_text("subject,vendor,centre,pathology,ed_frame,es_frame\ns,A,1,NOR,0,4\n")
    expect_error(tmp_path, "nifti", "s", "metadata.csv", "es_frame", "4 frames")


# --- Sunnybrook (DICOM files are linked, not copied)
def sunnybrook_copy(tmp_path, sunnybrook_root, drop=()):
    src = sunnybrook_root / "dicoms/SCD0000101"
    dst = tmp_path / "dicoms/SCD0000101"
    dst.mkdir(parents=True)
    for f in src.glob("*.dcm"):
        if f.name not in drop:
            (dst / f.name).symlink_to(f)
    shutil.copy(sunnybrook_root / "link.csv", tmp_path / "link.csv")
    cdir = tmp_path / "contourfiles/SC-HF-I-1/i-contours"
    cdir.mkdir(parents=True)
    return cdir


def test_sunnybrook_contour_of_missing_image(tmp_path, sunnybrook_root):
    cdir = sunnybrook_copy(tmp_path, sunnybrook_root)
    (cdir / "IM-0001-0999-icontour-manual.txt").write_text("10 10\n20 10\n20 20\n")
    expect_error(tmp_path, "sunnybrook", "SCD0000101", "IM-0001-0999-icontour-manual.txt", "image 999")


def test_sunnybrook_malformed_contour_and_incomplete_series(tmp_path, sunnybrook_root):
    cdir = sunnybrook_copy(tmp_path, sunnybrook_root, drop=("7.dcm",))
    (cdir / "IM-0001-0048-icontour-manual.txt").write_text("10 10\n20\n")
    expect_error(tmp_path, "sunnybrook", "SCD0000101", "SCD0000101", "different numbers of phases")
    (tmp_path / "dicoms/SCD0000101/7.dcm").symlink_to(sunnybrook_root / "dicoms/SCD0000101/7.dcm")
    expect_error(tmp_path, "sunnybrook", "SCD0000101", "IM-0001-0048-icontour-manual.txt", "contour")


def test_gzip_garbage_is_data_error(tmp_path):
    """A .nii.gz that is valid gzip but not NIfTI."""
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(b"not a nifti file" * 10))
    with pytest.raises(DataError) as info:
        get_reader("nifti").load(tmp_path, "x")
    assert "x.nii.gz" in str(info.value)
