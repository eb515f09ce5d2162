"""Guards of issue 15 at the API level: headers checked before allocating (nibabel, SimpleITK,
pydicom), a cache that verifies itself, ED/ES in range for every reader, blank images, split
disjointness, missing vendor metadata, label files never taken as images.

Fixtures are tiny synthetic files in the original layouts (ACDC: Bernard et al., IEEE TMI 2018;
M&Ms: Campello et al., IEEE TMI 2021; M&Ms-2: Martín-Isla et al., IEEE JBHI 2023; CAMUS MetaImage:
Leclerc et al., IEEE TMI 2019; nnU-Net raw layout: Isensee et al., Nature Methods 2021).
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cardiossp.data.cache import prepare
from cardiossp.data.datasets import LabeledSlices
from cardiossp.data.info import missing_metadata, summarize
from cardiossp.data.readers import get_reader
from cardiossp.data.readers.base import GZIP_MAX_RATIO, MAX_VOXELS, check_claim, is_label_file, load_nifti
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import check_split, load_split, make_split, save_split
from cardiossp.data.subject import Subject
from cardiossp.errors import DataError
from cardiossp.predict import expand_inputs

from .builders import acdc_patient, heart, image_for, lying_header, save


def raises(fn, *fragments, path_name=None):
    with pytest.raises(DataError) as info:
        fn()
    for frag in fragments:
        assert frag in str(info.value), f"{frag!r} not in {info.value}"
    if path_name is not None:
        assert info.value.path is not None and info.value.path.name == path_name, info.value.path
    return info.value


# ---------------------------------------------------------------- 1. claimed sizes, every image reader path
def test_check_claim_bounds():
    check_claim("x.nii", (10, 10, 2), 2, raw_bytes=400)  # fits exactly
    raises(lambda: check_claim("x.nii", (10, 10, 2), 2, raw_bytes=399), "400 bytes", "399", "truncated")
    check_claim("x.nii.gz", (1000, 1000), 1, gzip_bytes=1_000_000 // GZIP_MAX_RATIO + 1)
    raises(lambda: check_claim("x.nii.gz", (1000, 1000), 1, gzip_bytes=1_000_000 // GZIP_MAX_RATIO - 1), "1032:1")
    raises(lambda: check_claim("x.dcm", (MAX_VOXELS + 1,), 1), "limit")
    raises(lambda: check_claim("x.nii", (10, 0, 2), 2, raw_bytes=10**6), "zero or negative")


@pytest.mark.parametrize("name, shape, dtype, nifti2, problem", [
    ("a.nii", (2000, 2000, 10), np.int16, False, "holds 65,536 bytes"),
    ("b.nii.gz", (2000, 2000, 10), np.float32, False, "1032:1"),
    ("c.nii", (100000, 100000, 10), np.int16, True, "limit"),
])
def test_load_nifti_checks_the_header_before_reading(tmp_path, name, shape, dtype, nifti2, problem):
    path = lying_header(tmp_path / name, shape, dtype=dtype, nifti2=nifti2)
    raises(lambda: load_nifti(path), "header claims", problem, path_name=name)


def test_a_short_but_honest_gzip_is_still_read(tmp_path):
    """The deflate bound must not refuse good files: a very compressible volume passes."""
    path = save(tmp_path / "smooth.nii.gz", np.tile(np.arange(64, dtype=np.int16), (64, 64, 1)))
    data, _, _ = load_nifti(path)
    assert data.shape == (64, 64, 64) and (64 * 64 * 64 * 2) / path.stat().st_size > 50


def test_metaimage_header_checked_before_simpleitk_allocates(tmp_path):
    from cardiossp.data.readers.camus import read_itk

    (tmp_path / "x.raw").write_bytes(b"\0" * 1000)
    head = "ObjectType = Image\nNDims = 2\nDimSize = 20000 20000\nElementType = MET_UCHAR\n"
    (tmp_path / "x.mhd").write_text(head + "ElementDataFile = x.raw\n")
    raises(lambda: read_itk(tmp_path / "x.mhd"), "header claims", "x.raw holds 1,000 bytes", path_name="x.mhd")
    (tmp_path / "y.mhd").write_text(head + "CompressedData = True\nElementDataFile = x.raw\n")
    raises(lambda: read_itk(tmp_path / "y.mhd"), "1032:1", path_name="y.mhd")
    (tmp_path / "z.mhd").write_text(head + "ElementDataFile = missing.raw\n")
    raises(lambda: read_itk(tmp_path / "z.mhd"), "missing.raw", "missing", path_name="z.mhd")


def write_dicom(path, rows, cols, pixel_bytes, value=None):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", "1.2.3", 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.PixelData = pixel_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_header_checked_before_pixel_data_is_decoded(tmp_path):
    from cardiossp.data.readers.sunnybrook import read_series

    write_dicom(tmp_path / "s" / "0001.dcm", 40000, 40000, b"\1\0" * 500)
    raises(lambda: read_series(tmp_path / "s"), "header claims", "40000 x 40000", "PixelData holds 1,000 bytes",
           path_name="0001.dcm")


def test_dicom_blank_series_refused(tmp_path):
    from cardiossp.data.readers.sunnybrook import read_series

    write_dicom(tmp_path / "s" / "0001.dcm", 8, 8, b"\0\0" * 64)
    raises(lambda: read_series(tmp_path / "s"), "blank", path_name="s")
    rng = np.random.default_rng(0)
    write_dicom(tmp_path / "t" / "0001.dcm", 8, 8, rng.integers(0, 500, 64, dtype=np.uint16).tobytes())
    image, _, _, _ = read_series(tmp_path / "t")
    assert image.shape == (8, 8, 1, 1)


# ---------------------------------------------------------------- 2. the cache verifies itself
@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "acdc"
    for n in (1, 2, 3):
        acdc_patient(root, n, cine=n == 3)
    return root, prepare([("acdc", root)], tmp_path / "cache", spacing=1.5, size=32)


def test_meta_records_every_array(cache):
    _, out = cache
    meta = json.loads((out / "subjects" / "acdc_patient003" / "meta.json").read_text())
    for name in ("image.npy", "labels.npy", "native_labels.npy"):
        rec = meta["arrays"][name]
        arr = np.load(out / "subjects" / "acdc_patient003" / name)
        assert rec["shape"] == list(arr.shape) and rec["dtype"] == arr.dtype.name
        assert rec["bytes"] == (out / "subjects" / "acdc_patient003" / name).stat().st_size and len(rec["sha256"]) == 64
    assert meta["arrays"]["image.npy"]["shape"] == [5, 3, 32, 32]  # the whole cine


def test_opening_a_damaged_cache_names_the_file(cache):
    _, out = cache
    labels = out / "subjects" / "acdc_patient001" / "native_labels.npy"
    labels.write_bytes(labels.read_bytes()[:-7])
    raises(lambda: SliceCache(out), "truncated", "prepare", path_name="native_labels.npy")
    # another subject's array copied in: a valid .npy of the wrong shape
    subjects = out / "subjects"
    shutil.copy(subjects / "acdc_patient002" / "image.npy", subjects / "acdc_patient003" / "image.npy")
    (out / "subjects" / "acdc_patient001" / "meta.json").unlink()
    e = raises(lambda: SliceCache(out), "meta.json missing", "1 more damaged file(s)", "acdc_patient003/image.npy")
    assert e.path.name == "meta.json"


def test_a_bit_flip_is_found_by_hash_only(cache):
    _, out = cache
    image = out / "subjects" / "acdc_patient002" / "image.npy"
    raw = bytearray(image.read_bytes())
    raw[-3] ^= 0x40
    image.write_bytes(bytes(raw))
    SliceCache(out)  # sizes fine
    raises(lambda: SliceCache(out, verify="hash"), "SHA-256", path_name="image.npy")


def test_arrays_opened_after_the_check_are_checked_again(cache):
    """Damage after the cache was opened (or verify=None) still gives a DataError naming the file,
    not numpy's unnamed 'mmap length is greater than file size'."""
    _, out = cache
    sc = SliceCache(out, verify=None)
    ds = LabeledSlices(sc, ["acdc_patient001"])
    image = out / "subjects" / "acdc_patient001" / "image.npy"
    image.write_bytes(image.read_bytes()[:200])
    raises(lambda: ds[0], "truncated", path_name="image.npy")


def test_old_caches_size_checked_and_prepared_again(cache, recwarn):
    root, out = cache
    meta_path = out / "subjects" / "acdc_patient002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["arrays"]  # a cache from before the record
    meta_path.write_text(json.dumps(meta))
    assert SliceCache(out).image("acdc_patient002", 0, 0).shape == (32, 32)  # accepted: size check only
    image = out / "subjects" / "acdc_patient002" / "image.npy"
    image.write_bytes(image.read_bytes()[:-2])
    raises(lambda: SliceCache(out), "truncated", path_name="image.npy")  # the header still tells the size
    with pytest.warns(UserWarning, match="prepared again"):
        prepare([("acdc", root)], out, spacing=1.5, size=32)
    assert "arrays" in json.loads(meta_path.read_text())
    SliceCache(out, verify="hash")


def test_blank_labeled_frame_of_a_cine_refused(tmp_path):
    root = tmp_path / "acdc"
    folder = acdc_patient(root, 1, ed=1, es=3, cine=True)
    cine = folder / "patient001_4d.nii.gz"
    img = nib.load(cine)
    data = np.asarray(img.dataobj).copy()
    data[..., 2] = 0  # ES (Info.cfg 3 -> t=2) blank, the rest of the cine fine
    nib.save(nib.Nifti1Image(data, img.affine), cine)
    raises(lambda: prepare([("acdc", root)], tmp_path / "cache", size=32), "frame 2", "blank")


# ---------------------------------------------------------------- 3. ED/ES in range, every reader
@pytest.mark.parametrize("cfg, problem", [("ED: 0\nES: 3\n", "from 1"), ("ED: 2\nES: 2\n", "same frame"),
                                          ("ED: 1\nES: 9\nNbFrame: 5\n", "beyond NbFrame")])
def test_acdc_info_cfg_frames(tmp_path, cfg, problem):
    folder = acdc_patient(tmp_path, 1, cine=True)
    (folder / "Info.cfg").write_text(cfg)
    raises(lambda: get_reader("acdc").load(tmp_path, "patient001"), problem, path_name="Info.cfg")


def mnms_cine(root, csv_row, labeled=(1, 3)):
    lab = np.zeros((*heart().shape, 5), np.uint8)
    for t in labeled:
        lab[..., t] = np.where(heart() == 3, 1, 0)
    save(root / "S1" / "S1_sa.nii.gz", image_for(lab, 0))
    save(root / "S1" / "S1_sa_gt.nii.gz", lab)
    (root / "info.csv").write_text(f"External code,Vendor,Centre,ED,ES\nS1,A,1,{csv_row}\n")


@pytest.mark.parametrize("row, problem", [("1,", "has ED but no ES"), (",3", "has ES but no ED"),
                                          ("3,3", "same frame")])
def test_mnms_csv_frames(tmp_path, row, problem):
    mnms_cine(tmp_path, row)
    raises(lambda: get_reader("mnms").load(tmp_path, "S1"), "S1", problem, path_name="info.csv")


def test_mnms2_csv_ed_equal_es(tmp_path):
    d = tmp_path / "001"
    lab = heart()
    cine = np.stack([image_for(lab, t) for t in range(4)], axis=-1)
    save(d / "001_SA_CINE.nii.gz", cine)
    save(d / "001_SA_ED.nii.gz", cine[..., 0])
    save(d / "001_SA_ES.nii.gz", cine[..., 2])
    (tmp_path / "dataset_information.csv").write_text("SUBJECT_CODE,VENDOR,ED,ES\n1,SIEMENS,2,2\n")
    raises(lambda: get_reader("mnms2").load(tmp_path, "001"), "same frame", path_name="dataset_information.csv")


def test_nifti_metadata_ed_on_an_unlabeled_frame(tmp_path):
    lab = np.zeros((*heart().shape, 4), np.uint8)
    lab[..., 0] = lab[..., 2] = np.where(heart() == 3, 1, 0)
    save(tmp_path / "imagesTr" / "c1_0000.nii.gz", image_for(lab, 0))
    save(tmp_path / "labelsTr" / "c1.nii.gz", lab)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "LV": 1}}))
    (tmp_path / "metadata.csv").write_text("subject,ed_frame,es_frame\nc1,1,2\n")
    raises(lambda: get_reader("nifti").load(tmp_path, "imagesTr/c1"), "ed_frame", "frame 1", "no labels", "[0, 2]",
           path_name="metadata.csv")
    (tmp_path / "metadata.csv").write_text("subject,ed_frame,es_frame\nc1,2,2\n")
    raises(lambda: get_reader("nifti").load(tmp_path, "imagesTr/c1"), "same frame", path_name="metadata.csv")


def test_sunnybrook_phases_with_equal_lv_area_refused(tmp_path, sunnybrook_root):
    from .test_reader_errors import sunnybrook_copy

    cdir = sunnybrook_copy(tmp_path, sunnybrook_root)
    reader = get_reader("sunnybrook")
    from cardiossp.data.readers.sunnybrook import read_series

    _, _, index, _ = read_series(tmp_path / "dicoms" / "SCD0000101")
    by_zt = {zt: num for num, zt in index.items()}
    square = "60 60\n90 60\n90 90\n60 90\n"
    for t in (0, 7):  # the same contour on the same slice of two phases
        (cdir / f"IM-0001-{by_zt[(5, t)]:04d}-icontour-manual.txt").write_text(square)
    raises(lambda: reader.load(tmp_path, "SCD0000101"), "cannot tell ED from ES", path_name="SC-HF-I-1")


def test_subject_record_refuses_frames_out_of_range():
    img = np.random.default_rng(0).random((4, 4, 2, 3)).astype(np.float32)
    raises(lambda: Subject("s", "x", img, (1, 1, 1), np.eye(4), ed_frame=-1, source="/d/s"), "ED frame index -1")
    raises(lambda: Subject("s", "x", img, (1, 1, 1), np.eye(4), ed_frame=0, es_frame=3), "ES frame index 3")
    lab = np.zeros((4, 4, 2), np.uint8)
    raises(lambda: Subject("s", "x", img, (1, 1, 1), np.eye(4), labels={5: lab}), "labels of frame 5")


# ---------------------------------------------------------------- 3. splits and metadata
def subjects_table(vendors):
    return pd.DataFrame({"subject": [f"s{i}" for i in range(len(vendors))], "dataset": "mnms", "vendor": vendors,
                         "centre": "1", "pathology": "NOR", "view": "SA", "labeled_frames": 2,
                         "metadata_missing": [None if v else "/d/info.csv has no 'subjectid' column" for v in vendors]})


def test_load_split_enforces_disjoint_parts(tmp_path):
    base = {"train": ["a", "b"], "val": ["c"], "test": ["d"], "unlabeled": ["u"]}
    for change, problem in [({"test": ["d", "a"]}, "1 subject(s) in both train and test: a"),
                            ({"val": ["c", "d"]}, "in both val and test: d"),
                            ({"unlabeled": ["u", "c"]}, "in both val and unlabeled: c"),
                            ({"budgets": {1: ["d"]}}, "budgets 1 holds 1 test subject"),
                            ({"subsets": {"vendor_A": ["c"]}}, "subsets vendor_A holds 1 val"),
                            ({"train": ["a", "a"]}, "listed twice in train"),
                            ({"train": "a"}, "train must be a list")]:
        path = save_split({**base, **change}, tmp_path / "s.yaml")
        raises(lambda p=path: load_split(p), problem, path_name="s.yaml")
    assert load_split(save_split(base, tmp_path / "ok.yaml"))["train"] == ["a", "b"]


def test_make_split_output_passes_its_own_check():
    split = make_split(subjects_table(list("AABBCCAABB")), val=2, test=2, budgets=[2, 4])
    check_split(split)


def test_vendor_groups_need_every_vendor():
    table = subjects_table(["A", "B", None, "A", None, "B"])
    with pytest.raises(DataError) as e:
        make_split(table, val=1, test=1, vendor_groups={"vendor_AB": ["A", "B"]})
    assert "unknown for 2 of 6: s2, s4" in str(e.value) and "info.csv" in str(e.value)
    with pytest.raises(DataError, match="--stratify vendor"):
        make_split(table, val=1, test=1, stratify="vendor")
    make_split(table, val=1, test=1)  # auto: unknown is a stratum of its own, nothing needs the vendor


def test_info_summary_counts_unknown_metadata():
    table = subjects_table(["A", None, None])
    table["pathology"] = [None, "NOR", "NOR"]
    for c, v in (("n_frames", 2), ("n_slices", 3), ("spacing_x", 1.0), ("spacing_y", 1.0), ("spacing_z", 8.0)):
        table[c] = v
    summary = summarize(table)
    assert summary.iloc[-1]["unknown"] == "vendor 2, pathology 1"
    lines = missing_metadata(table)
    assert lines[0] == "vendor unknown for 2 of 3 subjects (s1, s2): /d/info.csv has no 'subjectid' column"
    assert lines[1].startswith("pathology unknown for 1 of 3 subjects (s0)")


# ---------------------------------------------------------------- 3. label files are not images
@pytest.mark.parametrize("path, label", [
    ("p/patient001_frame01_gt.nii.gz", True), ("p/patient001_frame01.nii.gz", False), ("p/x_seg.nii", True),
    ("p/labels.nii.gz", True), ("p/labelsTr/case_001.nii.gz", True), ("p/imagesTr/case_001_0000.nii.gz", False),
    ("p/001_SA_ED_gt.nii.gz", True), ("p/patient001_4d.nii.gz", False), ("p/gt_overview.nii.gz", False),
])
def test_is_label_file(path, label):
    assert is_label_file(path) is label


def test_expand_inputs_skips_label_maps(tmp_path):
    folder = acdc_patient(tmp_path, 1, cine=True)
    names = [p.name for _, p in expand_inputs([folder])]
    assert names == ["patient001_4d.nii.gz", "patient001_frame01.nii.gz", "patient001_frame03.nii.gz"]
    only_labels = tmp_path / "gt"
    only_labels.mkdir()
    shutil.copy(folder / "patient001_frame01_gt.nii.gz", only_labels)
    raises(lambda: expand_inputs([only_labels]), "only label maps", path_name="gt")


def test_plain_nifti_folder_does_not_take_label_maps_as_subjects(tmp_path):
    acdc_patient(tmp_path, 1)
    ids = get_reader("nifti").subject_ids(tmp_path)
    assert ids == ["patient001/patient001_frame01", "patient001/patient001_frame03"]
