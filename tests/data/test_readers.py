"""Dataset readers on the real samples in ../shared/data and on original-layout fixtures built from them.

Data: ACDC (Bernard et al., IEEE TMI 2018), M&Ms (Campello et al., IEEE TMI 2021), M&Ms-2
(Martín-Isla et al., IEEE JBHI 2023), Sunnybrook (Radau et al., MIDAS J. 2009).
Internal label convention checked throughout: 0 background, 1 LV, 2 MYO, 3 RV.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from cardiossp.data.labels import LV, MYO, RV
from cardiossp.data.readers import READERS, get_reader, iter_subjects
from cardiossp.data.readers.nifti_folder import label_map_from_dataset_json
from cardiossp.data.readers.sunnybrook import read_series


def raw(path):
    return np.asarray(nib.load(str(path)).dataobj)


def save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def heart_box(gt, margin=8):
    """In-plane crop box around the labels (keeps fixtures small)."""
    xs, ys = np.nonzero(gt.any(axis=2))
    return (slice(max(xs.min() - margin, 0), xs.max() + margin), slice(max(ys.min() - margin, 0), ys.max() + margin))


def ring_fraction(lab, cls, other):
    """Fraction of the in-plane 1-voxel ring around class ``cls`` that is labeled ``other``."""
    m = lab == cls
    ring = ndimage.binary_dilation(m, structure=np.ones((3, 3, 1), bool)) & ~m
    return float((lab[ring] == other).mean())


def test_registry_has_all_readers():
    assert {"acdc", "mnms", "mnms2", "nifti", "sunnybrook"} <= set(READERS.names())


# ---------------------------------------------------------------- ACDC
def test_acdc_counts_and_4d_cine(acdc_root):
    reader = get_reader("acdc")
    ids = reader.subject_ids(acdc_root)
    assert ids == sorted(p.name for p in acdc_root.glob("patient[0-9][0-9][0-9]") if p.is_dir())
    assert len(ids) == 100
    lines = (acdc_root / "patient090/Info.cfg").read_text().splitlines()
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    ed, es, n_frames = (int(info[k]) for k in ("ED", "ES", "NbFrame"))
    s = reader.load(acdc_root, "patient090")
    assert s.shape[3] == n_frames and s.image.dtype == np.float32
    assert (s.ed_frame, s.es_frame) == (ed - 1, es - 1)
    assert set(s.labels) == {ed - 1, es - 1}
    ed_file = acdc_root / f"patient090/patient090_frame{ed:02d}.nii.gz"
    np.testing.assert_array_equal(s.image[..., s.ed_frame], raw(ed_file).astype(np.float32))
    assert np.allclose(s.spacing, nib.load(str(ed_file)).header.get_zooms()[:3])


def test_acdc_label_conversion(acdc_root):
    s = get_reader("acdc").load(acdc_root, "patient001")
    assert s.shape[3] == 2 and (s.ed_frame, s.es_frame) == (0, 1)
    gt = raw(acdc_root / f"patient001/patient001_frame{s.frame_numbers[0] + 1:02d}_gt.nii.gz")
    lab = s.labels[0]
    assert lab.dtype == np.uint8
    # ACDC 1 RV, 2 MYO, 3 LV -> internal 1 LV, 2 MYO, 3 RV
    assert (lab == LV).sum() == (gt == 3).sum() > 0
    assert (lab == RV).sum() == (gt == 1).sum() > 0
    assert (lab == MYO).sum() == (gt == 2).sum() > 0
    # anatomy: the LV blood pool is enclosed by myocardium, the RV much less so
    assert ring_fraction(lab, LV, MYO) > 0.8 > ring_fraction(lab, RV, MYO) + 0.3


# ---------------------------------------------------------------- M&Ms
def test_mnms_frames_layout(mnms_root):
    with open(mnms_root / "subjects.csv", newline="") as fh:
        table = {r["SubjectID"]: r for r in csv.DictReader(fh)}
    reader = get_reader("mnms")
    assert reader.subject_ids(mnms_root) == sorted(table)
    assert len(table) == 6
    for s in iter_subjects(reader, mnms_root):
        assert (s.vendor, s.centre) == (table[s.subject_id]["Vendor"], table[s.subject_id]["Centre"])
        assert s.shape[3] == 2 and (s.ed_frame, s.es_frame) == (0, 1) and set(s.labels) == {0, 1}
        assert s.extra["layout"] == "frames"
    s = reader.load(mnms_root, "H1N8S6")
    ed = mnms_root / "H1N8S6/H1N8S6_sa_ED.nii.gz"
    np.testing.assert_array_equal(s.labels[1], raw(mnms_root / "H1N8S6/H1N8S6_sa_ES_gt.nii.gz").astype(np.uint8))
    np.testing.assert_array_equal(s.image[..., 0], raw(ed).astype(np.float32))
    assert np.allclose(s.spacing, nib.load(str(ed)).header.get_zooms())
    assert np.allclose(s.affine, nib.load(str(ed)).affine)
    assert ring_fraction(s.labels[0], LV, MYO) > 0.8 > ring_fraction(s.labels[0], RV, MYO) + 0.3


def build_mnms_original(root, mnms_root, sid="H1N8S6", with_frames=True):
    """Original M&Ms release layout from the real ED/ES frames: 4-frame cine (ED at 1, ES at 3)."""
    src = mnms_root / sid
    ed, es = (raw(src / f"{sid}_sa_{p}.nii.gz").astype(np.float32) for p in ("ED", "ES"))
    ed_gt, es_gt = (raw(src / f"{sid}_sa_{p}_gt.nii.gz").astype(np.uint8) for p in ("ED", "ES"))
    bx, by = heart_box(ed_gt + es_gt)
    ed, es, ed_gt, es_gt = (a[bx, by] for a in (ed, es, ed_gt, es_gt))
    rng = np.random.default_rng(0)
    cine = np.stack([es + rng.normal(0, 20, es.shape), ed, ed + rng.normal(0, 20, ed.shape), es], -1).astype(np.float32)
    gt = np.zeros(cine.shape, np.uint8)
    gt[..., 1], gt[..., 3] = ed_gt, es_gt
    affine = nib.load(str(src / f"{sid}_sa_ED.nii.gz")).affine
    save(root / f"Training/Labeled/{sid}/{sid}_sa.nii.gz", cine, affine)
    save(root / f"Training/Labeled/{sid}/{sid}_sa_gt.nii.gz", gt, affine)
    save(root / "Training/Unlabeled/X0X0X0/X0X0X0_sa.nii.gz", cine[..., :3], affine)
    frames = ["ED", "ES"] if with_frames else []
    header = ["", "External code", "VendorName", "Vendor", "Centre", *frames, "Pathology"]
    rows = [[0, sid, "Philips", "B", 2] + ([1, 3] if with_frames else []) + ["HCM"],
            [1, "X0X0X0", "Canon", "D", 5] + ([0, 2] if with_frames else []) + ["NOR"]]
    with open(root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)
    return dict(ed=ed, es=es, ed_gt=ed_gt, es_gt=es_gt)


def test_mnms_original_layout(tmp_path, mnms_root):
    ref = build_mnms_original(tmp_path, mnms_root)
    reader = get_reader("mnms")
    assert reader.subject_ids(tmp_path) == ["Training/Labeled/H1N8S6", "Training/Unlabeled/X0X0X0"]
    s, u = list(iter_subjects(reader, tmp_path))
    assert s.shape == ref["ed"].shape + (4,) and s.frame_numbers == [0, 1, 2, 3]
    assert (s.ed_frame, s.es_frame) == (1, 3) and set(s.labels) == {1, 3}
    np.testing.assert_array_equal(s.labels[1], ref["ed_gt"])
    np.testing.assert_array_equal(s.labels[3], ref["es_gt"])
    np.testing.assert_array_equal(s.image[..., 3], ref["es"])
    assert (s.vendor, s.extra["vendor_name"], s.centre, s.pathology) == ("B", "Philips", "2", "HCM")
    assert s.extra["split"] == "Training/Labeled" and s.extra["layout"] == "original"
    assert not u.is_labeled and u.labels == {} and u.shape[3] == 3
    assert (u.vendor, u.extra["vendor_name"], u.ed_frame, u.es_frame) == ("D", "Canon", 0, 2)


def test_mnms_original_ed_es_from_labels(tmp_path, mnms_root):
    """Without ED/ES in the CSV: the labeled frames are found, the larger LV volume is ED."""
    ref = build_mnms_original(tmp_path, mnms_root, with_frames=False)
    assert (ref["ed_gt"] == LV).sum() > (ref["es_gt"] == LV).sum()  # premise of the check below
    s = get_reader("mnms").load(tmp_path, "Training/Labeled/H1N8S6")
    assert (s.ed_frame, s.es_frame) == (1, 3) and set(s.labels) == {1, 3}


# ---------------------------------------------------------------- M&Ms-2
def test_mnms2_short_and_long_axis(mnms2_root):
    reader = get_reader("mnms2")
    assert reader.subject_ids(mnms2_root) == ["001", "001_LA"]
    sa, la = list(iter_subjects(reader, mnms2_root))
    d = mnms2_root / "001"
    assert (sa.subject_id, sa.view, la.subject_id, la.view) == ("001", "SA", "001_LA", "LA")
    assert sa.shape == raw(d / "001_SA_ED.nii.gz").shape + (2,)
    assert np.allclose(sa.spacing, nib.load(str(d / "001_SA_ED.nii.gz")).header.get_zooms())
    np.testing.assert_array_equal(sa.labels[sa.es_frame], raw(d / "001_SA_ES_gt.nii.gz").astype(np.uint8))
    assert ring_fraction(sa.labels[0], LV, MYO) > 0.8 > ring_fraction(sa.labels[0], RV, MYO) + 0.3
    # the long-axis cine holds every frame; ED/ES found by matching the ED/ES images
    cine_shape = nib.load(str(d / "001_LA_CINE.nii.gz")).shape
    assert la.shape == cine_shape and la.spacing[2] > 0
    np.testing.assert_array_equal(la.image[..., la.ed_frame], raw(d / "001_LA_ED.nii.gz").astype(np.float32))
    np.testing.assert_array_equal(la.image[..., la.es_frame], raw(d / "001_LA_ES.nii.gz").astype(np.float32))
    assert set(la.labels) == {la.ed_frame, la.es_frame}
    np.testing.assert_array_equal(la.labels[la.ed_frame], raw(d / "001_LA_ED_gt.nii.gz").astype(np.uint8))


def test_mnms2_short_axis_cine_and_info_csv(tmp_path, mnms2_root):
    src = mnms2_root / "001"
    ed, es = (raw(src / f"001_SA_{p}.nii.gz").astype(np.float32) for p in ("ED", "ES"))
    ed_gt, es_gt = (raw(src / f"001_SA_{p}_gt.nii.gz").astype(np.uint8) for p in ("ED", "ES"))
    bx, by = heart_box(ed_gt + es_gt)
    ed, es, ed_gt, es_gt = (a[bx, by] for a in (ed, es, ed_gt, es_gt))
    rng = np.random.default_rng(1)
    cine = np.stack([(ed + es) / 2, ed + rng.normal(0, 30, ed.shape), ed, es + rng.normal(0, 30, ed.shape), es], -1)
    aff = nib.load(str(src / "001_SA_ED.nii.gz")).affine
    d = tmp_path / "dataset/007"
    for name, arr in [("ED", ed), ("ES", es), ("ED_gt", ed_gt), ("ES_gt", es_gt), ("CINE", cine.astype(np.float32))]:
        save(d / f"007_SA_{name}.nii.gz", arr, aff)
    (tmp_path / "dataset_information.csv").write_text(
        "SUBJECT_CODE,DISEASE,SEX,AGE,VENDOR,SCANNER,FIELD\n7,DLV,M,60,Philips Medical Systems,Achieva,1.5\n")
    reader = get_reader("mnms2")
    assert reader.subject_ids(tmp_path) == ["dataset/007"]
    s = reader.load(tmp_path, "dataset/007")
    assert s.shape == ed.shape + (5,) and (s.ed_frame, s.es_frame) == (2, 4)
    np.testing.assert_array_equal(s.labels[2], ed_gt)
    np.testing.assert_array_equal(s.labels[4], es_gt)
    assert (s.vendor, s.extra["vendor_name"], s.pathology, s.extra["scanner"]) == (
        "B", "Philips Medical Systems", "DLV", "Achieva")


# ---------------------------------------------------------------- NIfTI folders
ACDC_STYLE_JSON = {"name": "toy", "labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, "file_ending": ".nii.gz"}


def test_nnunet_folder_matches_acdc_reader(tmp_path, acdc_root):
    ref = get_reader("acdc").load(acdc_root, "patient001")
    pid, fr = "patient001", ref.frame_numbers[0] + 1
    img = nib.load(str(acdc_root / f"{pid}/{pid}_frame{fr:02d}.nii.gz"))
    gt = raw(acdc_root / f"{pid}/{pid}_frame{fr:02d}_gt.nii.gz")
    save(tmp_path / "imagesTr/case1_0000.nii.gz", np.asarray(img.dataobj), img.affine)
    save(tmp_path / "labelsTr/case1.nii.gz", gt.astype(np.uint8), img.affine)
    save(tmp_path / "imagesTs/case9_0000.nii.gz", np.asarray(img.dataobj), img.affine)
    # a 4D case: 3 frames, labels at frames 0 (ED-like, large LV) and 2 (eroded LV)
    im4 = np.stack([np.asarray(img.dataobj)] * 3, -1).astype(np.float32)
    lab4 = np.zeros(im4.shape, np.uint8)
    lab4[..., 0] = gt
    lab4[..., 2] = np.where((gt == 3) & ~ndimage.binary_erosion(gt == 3, iterations=2), 2, gt)
    save(tmp_path / "imagesTr/case4d_0000.nii.gz", im4, img.affine)
    save(tmp_path / "labelsTr/case4d.nii.gz", lab4, img.affine)
    (tmp_path / "dataset.json").write_text(json.dumps(ACDC_STYLE_JSON))

    reader = get_reader("nifti")
    assert reader.subject_ids(tmp_path) == ["imagesTr/case1", "imagesTr/case4d", "imagesTs/case9"]
    s1, s4, s9 = list(iter_subjects(reader, tmp_path))
    assert s1.shape == ref.shape[:3] + (1,) and set(s1.labels) == {0}
    np.testing.assert_array_equal(s1.labels[0], ref.labels[0])  # same mapping as the ACDC reader
    assert s4.shape[3] == 3 and set(s4.labels) == {0, 2} and (s4.ed_frame, s4.es_frame) == (0, 2)
    assert s9.subject_id == "case9" and not s9.is_labeled
    assert s1.extra["dataset_name"] == "toy"


def test_dataset_json_label_names(tmp_path):
    p = tmp_path / "dataset.json"
    p.write_text(json.dumps({"labels": {"0": "background", "1": "Left Ventricle", "2": "myocardium",
                                        "3": "right_ventricle"}}))  # nnU-Net v1 style
    assert label_map_from_dataset_json(p)[0] == {0: 0, 1: LV, 2: MYO, 3: RV}
    p.write_text(json.dumps({"labels": {"background": 0, "RV blood pool": 1, "LV blood pool": 2, "MYO": 3}}))
    assert label_map_from_dataset_json(p)[0] == {0: 0, 1: RV, 2: LV, 3: MYO}


def test_plain_nifti_folder_with_metadata(tmp_path):
    rng = np.random.default_rng(2)
    aff = np.diag([1.5, 1.5, 8.0, 1.0])
    save(tmp_path / "a/x.nii.gz", rng.random((20, 18, 4)).astype(np.float32), aff)
    save(tmp_path / "b.nii", rng.random((20, 18, 4, 5)).astype(np.float32), aff)
    (tmp_path / "metadata.csv").write_text("subject,vendor,centre,pathology,ed_frame,es_frame,note\n"
                                           "b,A,3,DCM,1,3,hello\n")
    reader = get_reader("nifti")
    assert reader.subject_ids(tmp_path) == ["a/x", "b"]
    x, b = list(iter_subjects(reader, tmp_path))
    assert x.subject_id == "x" and x.shape == (20, 18, 4, 1) and not x.is_labeled and x.vendor is None
    assert b.shape == (20, 18, 4, 5) and not b.is_labeled
    assert np.allclose(b.spacing, (1.5, 1.5, 8.0)) and np.allclose(b.affine, aff)
    got = (b.vendor, b.centre, b.pathology, b.ed_frame, b.es_frame, b.extra["note"])
    assert got == ("A", "3", "DCM", 1, 3, "hello")


# ---------------------------------------------------------------- Sunnybrook
def test_sunnybrook_geometry_matches_simpleitk(sunnybrook_root):
    sitk = pytest.importorskip("SimpleITK")
    folder = sunnybrook_root / "dicoms/SCD0000101"
    files = sorted(folder.glob("*.dcm"))
    image, affine, index, _ = read_series(folder)
    assert image.shape[2] * image.shape[3] == len(files) == len(index)
    flip = np.diag([-1.0, -1.0, 1.0])  # SimpleITK is LPS, our affine RAS
    for f in files[:: len(files) // 7]:
        z, t = index[int(f.stem)]
        im = sitk.ReadImage(str(f))
        np.testing.assert_array_equal(image[:, :, z, t], sitk.GetArrayFromImage(im)[0].T.astype(np.float32))
        direction = np.array(im.GetDirection()).reshape(3, 3)
        assert np.allclose(affine[:3, :2], flip @ direction[:, :2] * np.array(im.GetSpacing())[:2], atol=1e-4)
        assert np.allclose(affine @ [0, 0, z, 1], np.r_[flip @ np.array(im.GetOrigin()), 1], atol=1e-3)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert np.isclose(np.linalg.norm(affine[:3, 2]), float(ds.SpacingBetweenSlices), rtol=1e-3)
    # time runs forward within every slice
    trig = {index[int(f.stem)]: float(pydicom.dcmread(f, stop_before_pixels=True).TriggerTime) for f in files[:40]}
    for (z, t), v in trig.items():
        if (z, t + 1) in trig:
            assert trig[(z, t + 1)] > v


def polygon_area(path):
    x, y = np.loadtxt(path).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_sunnybrook_contour_labels(sunnybrook_root):
    s = get_reader("sunnybrook").load(sunnybrook_root, "SCD0000101")
    fn = np.array(s.extra["file_numbers"])  # (Z, T) DICOM file numbers
    assert fn.shape == s.shape[2:] and len(np.unique(fn)) == fn.size
    index = {int(fn[z, t]): (z, t) for z in range(fn.shape[0]) for t in range(fn.shape[1])}
    f = sunnybrook_root / f"dicoms/SCD0000101/{fn[3, 5]}.dcm"
    np.testing.assert_array_equal(s.image[:, :, 3, 5], pydicom.dcmread(f).pixel_array.T.astype(np.float32))
    icont = sorted((sunnybrook_root / "contourfiles/SC-HF-I-1/i-contours").glob("*.txt"))
    contoured = {index[int(p.name.split("-")[2])] for p in icont}
    assert set(s.labels) == {t for _, t in contoured}
    assert {(z, t) for t, zs in s.extra["labeled_slices"].items() for z in zs} == contoured
    assert s.extra["no_rv"] is True and "contoured" in s.extra["partial_labels"]
    lv_vol = {t: int((lab == LV).sum()) for t, lab in s.labels.items()}
    assert lv_vol[s.ed_frame] == max(lv_vol.values()) > lv_vol[s.es_frame] == min(lv_vol.values())
    for lab in s.labels.values():
        assert set(np.unique(lab)) <= {0, LV, MYO}
    # rasterised area matches the polygon area (shoelace) within 10 %
    for p in icont[:4]:
        z, t = index[int(p.name.split("-")[2])]
        assert abs((s.labels[t][:, :, z] == LV).sum() / polygon_area(p) - 1) < 0.1
    # the LV mask lies on the bright blood pool, the myocardium ring is darker
    myo_slices = [(t, z) for t, zs in s.extra["myo_slices"].items() for z in zs]
    assert myo_slices
    for t, z in myo_slices:
        lab, im = s.labels[t][:, :, z], s.image[:, :, z, t]
        assert im[lab == LV].mean() > 1.5 * im[lab == MYO].mean()
