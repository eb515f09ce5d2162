"""Bad-input corpus, data side (issue 15): headers that lie about their size, a damaged cache, ED/ES
out of range, blank images, overlapping splits, missing vendor metadata, label files given to predict.

Every case runs a real command (``cardiossp prepare | info | split | train | predict``) on tiny files
written in tmp_path in the original dataset layouts (ACDC: Bernard et al., IEEE TMI 2018; M&Ms:
Campello et al., IEEE TMI 2021; nnU-Net raw layout: Isensee et al., Nature Methods 2021), and checks
what a user sees: exit 2, one ``error:`` line naming the offending file, no traceback.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from data.builders import SHAPE, acdc_patient, heart, image_for, lying_header, mnms_frames, save

from cardiossp.data.slices import SliceCache

from .harness import assert_clean_failure, invoke, left_behind


@pytest.fixture(scope="module")
def acdc4(tmp_path_factory):
    root = tmp_path_factory.mktemp("acdc4") / "acdc"
    for n in range(1, 5):
        acdc_patient(root, n, cine=n == 4)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, acdc4):
    """A cache of the 4 ACDC subjects (1.5 mm, 32 px) and a split (1 val, 1 test), built by the CLI."""
    base = tmp_path_factory.mktemp("prepared")
    r = invoke("prepare", "-r", "acdc", "-d", acdc4, "--out", base / "cache", "--spacing", "1.5", "--size", "32")
    assert r.exit_code == 0, r.output
    r = invoke("split", "--cache", base / "cache", "--out", base / "split.yaml", "--val", "1", "--test", "1")
    assert r.exit_code == 0, r.output
    return base


@pytest.fixture
def cache_copy(tmp_path, prepared):
    shutil.copytree(prepared, tmp_path / "p")
    return tmp_path / "p" / "cache", tmp_path / "p" / "split.yaml"


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, prepared):
    """A tiny untrained segmentation run whose grid is the prepared cache's (32 px, 1.5 mm)."""
    from cardiossp.config import TrainConfig, load_config, save_run_config
    from cardiossp.train.segmentation import SegmentationModule

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(TrainConfig, "train", "tiny", {"model.n_stages": 3, "model.base_features": 4,
                                                     "model.max_features": 16})
    torch.manual_seed(0)
    module = SegmentationModule(cfg)
    (run / "checkpoints").mkdir()
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               run / "checkpoints" / "last.ckpt")
    save_run_config(cfg, run, cache=str(prepared / "cache"), split=str(prepared / "split.yaml"))
    return run


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------- 1. headers that claim more than the file
def test_prepare_refuses_nii_header_claiming_more_than_the_file(tmp_path):
    lying_header(tmp_path / "data" / "case.nii", (2000, 2000, 10))  # 80 MB claimed, 64 KiB there
    out = tmp_path / "cache"
    r = invoke("prepare", "-r", "nifti", "-d", tmp_path / "data", "--out", out)
    line = assert_clean_failure(r, "case.nii", "header claims")
    assert "2000 x 2000 x 10" in line and "truncated" in line
    assert left_behind(out) == []


def test_prepare_refuses_nii_gz_header_beyond_the_deflate_ratio(tmp_path):
    # 160 MB of float32 claimed from a ~64 KiB gzip file: deflate cannot expand more than ~1032:1
    lying_header(tmp_path / "data" / "case.nii.gz", (2000, 2000, 10), dtype=np.float32)
    r = invoke("prepare", "-r", "nifti", "-d", tmp_path / "data", "--out", tmp_path / "cache")
    assert_clean_failure(r, "case.nii.gz", "header claims", "1032:1")


def test_info_refuses_a_header_beyond_the_voxel_limit(tmp_path):
    # NIfTI-2 (64-bit dims): 100000 x 100000 x 10 voxels in a 64 KiB file; today a MemoryError traceback
    lying_header(tmp_path / "data" / "huge.nii", (100000, 100000, 10), nifti2=True)
    r = invoke("info", tmp_path / "data", "--reader", "nifti")
    assert_clean_failure(r, "huge.nii", "100000 x 100000 x 10", "limit")


def test_predict_refuses_a_lying_header_and_writes_nothing(tmp_path, model_run):
    bad = lying_header(tmp_path / "in" / "scan.nii.gz", (3000, 3000, 10), dtype=np.float32)
    out = tmp_path / "out"
    r = invoke("predict", bad, "--model", model_run, "--out", out, "--device", "cpu")
    assert_clean_failure(r, "scan.nii.gz", "header claims")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- 2. the cache verifies itself
def test_prepare_reuse_prepares_a_truncated_image_npy_again(tmp_path, cache_copy, acdc4):
    cache, _ = cache_copy
    image = cache / "subjects" / "acdc_patient002" / "image.npy"
    good = image.read_bytes()
    truncate(image)
    with pytest.warns(UserWarning, match="image.npy"):
        r = invoke("prepare", "-r", "acdc", "-d", acdc4, "--out", cache, "--spacing", "1.5", "--size", "32")
    assert r.exit_code == 0, r.output
    assert image.read_bytes() == good  # rebuilt from the source, not trusted
    SliceCache(cache, verify="hash")


def test_prepare_reuse_prepares_a_bit_flipped_image_npy_again(tmp_path, cache_copy, acdc4):
    cache, _ = cache_copy
    image = cache / "subjects" / "acdc_patient003" / "image.npy"
    good = bytearray(image.read_bytes())
    flipped = good.copy()
    flipped[-10] ^= 0xFF  # same size: only the SHA-256 record can tell
    image.write_bytes(bytes(flipped))
    with pytest.warns(UserWarning, match="SHA-256"):
        r = invoke("prepare", "-r", "acdc", "-d", acdc4, "--out", cache, "--spacing", "1.5", "--size", "32")
    assert r.exit_code == 0, r.output
    assert image.read_bytes() == bytes(good)


def test_info_names_a_truncated_image_npy(cache_copy):
    cache, _ = cache_copy
    truncate(cache / "subjects" / "acdc_patient001" / "image.npy")
    r = invoke("info", cache)
    assert_clean_failure(r, "acdc_patient001", "image.npy", "truncated", "prepare")


def test_split_names_a_truncated_labels_npy(cache_copy, tmp_path):
    cache, _ = cache_copy
    truncate(cache / "subjects" / "acdc_patient004" / "labels.npy", keep=0.9)
    r = invoke("split", "--cache", cache, "--out", tmp_path / "s.yaml", "--val", "1", "--test", "1")
    assert_clean_failure(r, "acdc_patient004", "labels.npy", "truncated")
    assert not (tmp_path / "s.yaml").exists()


def test_train_names_a_truncated_image_npy(cache_copy, tmp_path):
    cache, split = cache_copy
    truncate(cache / "subjects" / "acdc_patient002" / "image.npy", keep=0.3)
    out = tmp_path / "run"
    r = invoke("train", "--cache", cache, "--split", split, "--out", out, "--preset", "tiny",
               "--set", "model.n_stages=3", "--set", "data.patch_size=32")
    assert_clean_failure(r, "acdc_patient002", "image.npy")
    assert left_behind(out) == []


# ---------------------------------------------------------------- 3. guards against silent wrong results
def test_prepare_refuses_acdc_ed_zero_in_info_cfg(tmp_path):
    # Info.cfg is 1-based: "ED: 0" gave cine frame -1 and silently dropped the ED labels
    root = tmp_path / "acdc"
    acdc_patient(root, 1, ed=1, es=3, cine=True)
    cfg = root / "patient001" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("ED: 1", "ED: 0"))
    r = invoke("prepare", "-r", "acdc", "-d", root, "--out", tmp_path / "cache")
    assert_clean_failure(r, "patient001/Info.cfg", "ED", "from 1")
    assert left_behind(tmp_path / "cache") == []


def test_prepare_refuses_mnms_csv_with_ed_equal_to_es(tmp_path):
    root = tmp_path / "mnms"
    lab = np.zeros((*SHAPE, 4), np.uint8)
    lab[8:14, 8:14, :, 1] = 1
    save(root / "S1" / "S1_sa.nii.gz", image_for(lab, 1))
    save(root / "S1" / "S1_sa_gt.nii.gz", lab)
    (root / "info.csv").write_text("External code,Vendor,Centre,ED,ES\nS1,A,1,1,1\n")
    r = invoke("prepare", "-r", "mnms", "-d", root, "--out", tmp_path / "cache")
    assert_clean_failure(r, "info.csv", "S1", "same frame")


def test_prepare_refuses_a_blank_image(tmp_path):
    root = tmp_path / "acdc"
    acdc_patient(root, 1)
    acdc_patient(root, 2, blank=True)
    out = tmp_path / "cache"
    r = invoke("prepare", "-r", "acdc", "-d", root, "--out", out)
    assert_clean_failure(r, "patient002_frame01.nii.gz", "blank")
    assert left_behind(out) == []  # no cache.json: nothing a later command trusts


def test_predict_refuses_a_blank_image_and_writes_nothing(tmp_path, model_run):
    blank = save(tmp_path / "in" / "blank.nii.gz", np.zeros(SHAPE, np.float32))
    out = tmp_path / "out"
    r = invoke("predict", blank, "--model", model_run, "--out", out, "--device", "cpu")
    assert_clean_failure(r, "blank.nii.gz", "blank")
    assert not out.exists() or not any(out.iterdir())


def test_predict_refuses_a_cine_with_a_blank_frame(tmp_path, model_run):
    lab = heart()
    cine = np.stack([image_for(lab, 0), np.full(SHAPE, 7.0, np.float32), image_for(lab, 1)], axis=-1)
    path = save(tmp_path / "in" / "cine.nii.gz", cine)
    r = invoke("predict", path, "--model", model_run, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(r, "cine.nii.gz", "frame(s) [1]", "blank")


def test_train_refuses_a_split_with_a_subject_in_train_and_test(cache_copy, tmp_path):
    cache, split = cache_copy
    doc = yaml.safe_load(split.read_text())
    doc["test"] = doc["test"] + [doc["train"][0]]
    bad = tmp_path / "overlap.yaml"
    bad.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    r = invoke("train", "--cache", cache, "--split", bad, "--out", out, "--preset", "tiny")
    assert_clean_failure(r, "overlap.yaml", "train and test", doc["train"][0])
    assert left_behind(out) == []


IDS = ("A1B2C3", "D4E5F6", "G7H8I9", "J1K2L3")


def test_info_reports_vendor_unknown_when_the_mnms_csv_is_garbled(tmp_path):
    root = tmp_path / "mnms"
    mnms_frames(root, IDS, "SubjectID;Vendor;Centre\n" + "".join(f"{s};A;1\n" for s in IDS))  # wrong delimiter
    r = invoke("info", root, "--reader", "mnms")
    assert r.exit_code == 0, r.output
    assert re.search(r"\bunknown\b", r.output) and re.search(r"\bvendor 4\b", " ".join(r.output.split()))
    from cardiossp.data.info import missing_metadata, raw_subject_table

    (line, *_) = missing_metadata(raw_subject_table("mnms", root))  # what `info` prints under the table
    assert line.startswith("vendor unknown for 4 of 4 subjects") and "subjects.csv" in line


def test_split_vendor_groups_fail_naming_the_garbled_csv_and_the_subjects(tmp_path):
    root = tmp_path / "mnms"
    mnms_frames(root, IDS, "SubjectID;Vendor;Centre\n" + "".join(f"{s};A;1\n" for s in IDS))
    cache = tmp_path / "cache"
    r = invoke("prepare", "-r", "mnms", "-d", root, "--out", cache, "--size", "32")
    assert r.exit_code == 0, r.output
    r = invoke("split", "--cache", cache, "--out", tmp_path / "s.yaml", "--val", "1", "--test", "1",
               "--vendor-groups", "AB=A+B,CD=C+D")
    assert_clean_failure(r, "subjects.csv", "vendor", "mnms_A1B2C3", "4 of 4")
    assert not (tmp_path / "s.yaml").exists()


def test_split_vendor_groups_name_the_subjects_missing_from_the_csv(tmp_path):
    root = tmp_path / "mnms"
    mnms_frames(root, IDS, "SubjectID,Vendor,Centre\n" + "".join(f"{s},B,2\n" for s in IDS[:3]))
    cache = tmp_path / "cache"
    assert invoke("prepare", "-r", "mnms", "-d", root, "--out", cache, "--size", "32").exit_code == 0
    r = invoke("split", "--cache", cache, "--out", tmp_path / "s.yaml", "--val", "1", "--test", "1",
               "--vendor-groups", "AB=A+B")
    assert_clean_failure(r, "mnms_J1K2L3", "1 of 4", "no row")


def test_predict_on_an_acdc_patient_folder_skips_the_gt_files(tmp_path, model_run):
    folder = acdc_patient(tmp_path / "acdc", 1, ed=1, es=3, cine=True)
    out = tmp_path / "out"
    r = invoke("predict", folder, "--model", model_run, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in out.iterdir())
    assert written == ["patient001_4d_seg.nii.gz", "patient001_frame01_seg.nii.gz", "patient001_frame03_seg.nii.gz"]
    assert not any("_gt" in name for name in written)


def test_predict_refuses_a_label_file_named_on_its_own(tmp_path, model_run):
    folder = acdc_patient(tmp_path / "acdc", 1)
    gt = folder / "patient001_frame01_gt.nii.gz"
    r = invoke("predict", gt, "--model", model_run, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(r, "patient001_frame01_gt.nii.gz", "label map")


def test_predict_refuses_the_nnunet_labels_folder(tmp_path, model_run):
    labels = tmp_path / "Dataset001" / "labelsTr"
    save(labels / "case1.nii.gz", heart())
    r = invoke("predict", labels, "--model", model_run, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(r, "labelsTr", "label folder")


def test_cache_json_damaged_is_named(cache_copy):
    cache, _ = cache_copy
    (cache / "cache.json").write_text(json.dumps({"spacing": 1.5}))
    r = invoke("info", cache)
    assert_clean_failure(r, "cache.json", "damaged")
