"""Every input a researcher has: nnU-Net's per-frame ACDC layout, ACDC's training/ and testing/ in one cache,
a fixed test set (``split --test-from`` / ``--test-list``), and caches written by two processes at once.

Fixtures are small synthetic datasets in the original layouts (ACDC: Bernard et al., IEEE TMI 2018; nnU-Net's
raw dataset format: Isensee et al., Nature Methods 2021), written to tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from cardiossp.data.cache import LOCK_NAME, cache_lock, prepare
from cardiossp.data.readers import get_reader
from cardiossp.data.slices import SliceCache
from cardiossp.errors import DataError
from tests.corpus.harness import assert_clean_failure, invoke

GRID = {"spacing": 2.0, "size": 32}
AFFINE = np.diag([1.5, 1.5, 10.0, 1.0])


def heart(shape=(32, 28, 3), lv=5.0, seed=0):
    """(image, ACDC label map 1 RV, 2 MYO, 3 LV) of one frame; ``lv`` is the LV radius (voxels)."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - 12, y - 14)[..., None].repeat(shape[2], axis=2)
    gt = np.zeros(shape, np.uint8)
    gt[r < lv + 3] = 2
    gt[r < lv] = 3
    gt[(np.abs(x - 25) < 3)[..., None].repeat(shape[2], axis=2) & (np.abs(y - 14) < 5)[..., None]] = 1
    image = np.random.default_rng(seed).normal(100, 10, shape).astype(np.float32) + gt * 60.0
    return image, gt


def write_acdc_patient(root, pid, seed=0):
    folder = root / pid
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: 1\nES: 2\nGroup: {('NOR', 'DCM')[seed % 2]}\nNbFrame: 2\n")
    for n, lv in ((1, 6.0), (2, 4.0)):
        image, gt = heart(lv=lv, seed=seed * 10 + n)
        nib.save(nib.Nifti1Image(image, AFFINE), folder / f"{pid}_frame{n:02d}.nii.gz")
        nib.save(nib.Nifti1Image(gt, AFFINE), folder / f"{pid}_frame{n:02d}_gt.nii.gz")


@pytest.fixture
def acdc(tmp_path):
    """ACDC's release layout: training/ patient001-006, testing/ patient101-103."""
    root = tmp_path / "ACDC"
    for i in range(1, 7):
        write_acdc_patient(root / "training", f"patient{i:03d}", seed=i)
    for i in range(101, 104):
        write_acdc_patient(root / "testing", f"patient{i:03d}", seed=i)
    return root


def subjects_of(cache) -> list[str]:
    return sorted(pd.read_csv(cache / "subjects.csv")["subject"])


# ---------------------------------------------------------------- nnU-Net's per-frame ACDC conversion
def write_nnunet_acdc(root, frames=None):
    """nnU-Net v2's Dataset027_ACDC layout: ``imagesTr/patientNNN_frameXX_0000.nii.gz`` +
    ``labelsTr/patientNNN_frameXX.nii.gz`` (labels for imagesTr only)."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
        "numTraining": 4, "file_ending": ".nii.gz"}))
    frames = frames or {"imagesTr": {"patient001": (1, 12), "patient002": (1, 8)}, "imagesTs": {"patient101": (1, 14)}}
    for sub, patients in frames.items():
        (root / sub).mkdir()
        for k, (pid, numbers) in enumerate(patients.items()):
            for n in numbers:
                image, gt = heart(lv=6.0 if n == 1 else 4.0, seed=k * 100 + n)
                nib.save(nib.Nifti1Image(image, AFFINE), root / sub / f"{pid}_frame{n:02d}_0000.nii.gz")
                if sub == "imagesTr":
                    (root / "labelsTr").mkdir(exist_ok=True)
                    nib.save(nib.Nifti1Image(gt, AFFINE), root / "labelsTr" / f"{pid}_frame{n:02d}.nii.gz")
    return root


def test_nnunet_per_frame_cases_become_one_subject_per_patient_with_ed_and_es(tmp_path):
    root = write_nnunet_acdc(tmp_path / "Dataset027_ACDC")
    reader = get_reader("nifti")
    assert reader.subject_ids(root) == ["imagesTr/patient001", "imagesTr/patient002", "imagesTs/patient101"]
    s = reader.load(root, "imagesTr/patient001")
    assert s.subject_id == "patient001" and s.image.shape == (32, 28, 3, 2)
    assert s.frame_numbers == [0, 11]  # frame01 and frame12: ACDC counts from 1
    assert (s.ed_frame, s.es_frame) == (0, 1) and set(s.labels) == {0, 1}
    _, gt12 = heart(lv=4.0, seed=12)
    expected = np.array([0, 3, 2, 1], np.uint8)[gt12]  # dataset.json RV 1, MLV 2, LVC 3 -> internal 3, 2, 1
    np.testing.assert_array_equal(s.labels[1], expected)
    np.testing.assert_array_equal(s.image[..., 1], np.asarray(nib.load(root / "imagesTr/patient001_frame12_0000.nii.gz")
                                                               .dataobj, dtype=np.float32))
    files = [str(p.relative_to(root)) for p in reader.source_files(root, "imagesTr/patient001")]
    assert files == ["imagesTr/patient001_frame01_0000.nii.gz", "imagesTr/patient001_frame12_0000.nii.gz",
                     "labelsTr/patient001_frame01.nii.gz", "labelsTr/patient001_frame12.nii.gz"]
    test = reader.load(root, "imagesTs/patient101")
    assert test.image.shape[3] == 2 and not test.labels and test.ed_frame is None
    # the cache then has labeled ED and ES frames to train on: one subject per patient
    cache = prepare([("nifti", root)], tmp_path / "cache", **GRID)
    assert subjects_of(cache) == ["nifti_patient001", "nifti_patient002", "nifti_patient101"]
    m = SliceCache(cache).manifest
    labeled = m[m.labeled]
    assert set(labeled.subject) == {"nifti_patient001", "nifti_patient002"}
    assert labeled.groupby("subject").phase.apply(set).tolist() == [{"ED", "ES"}, {"ED", "ES"}]


def test_nnunet_per_frame_metadata_gives_ed_es_as_the_file_frame_numbers(tmp_path):
    root = write_nnunet_acdc(tmp_path / "ds")
    (root / "metadata.csv").write_text("subject,vendor,ed_frame,es_frame\npatient002,B,8,1\n")
    s = get_reader("nifti").load(root, "imagesTr/patient002")
    assert (s.ed_frame, s.es_frame, s.vendor) == (1, 0, "B")  # frame08 is ED, frame01 ES
    (root / "metadata.csv").write_text("subject,ed_frame,es_frame\npatient002,3,1\n")
    with pytest.raises(DataError, match=r"ed_frame of patient002 is 3.*frames \[1, 8\]") as e:
        get_reader("nifti").load(root, "imagesTr/patient002")
    assert e.value.path.name == "metadata.csv"


def test_nnunet_per_frame_frames_on_another_grid_are_refused(tmp_path):
    root = write_nnunet_acdc(tmp_path / "ds", frames={"imagesTr": {"patient001": (1, 12)}})
    image, _ = heart(shape=(30, 28, 3))
    nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / "patient001_frame12_0000.nii.gz")
    with pytest.raises(DataError, match="must share one grid") as e:
        get_reader("nifti").load(root, "imagesTr/patient001")
    assert e.value.path.name == "patient001_frame12_0000.nii.gz"


# ---------------------------------------------------------------- prepare adds sources
def test_second_prepare_keeps_the_first_sources(acdc, tmp_path):
    cache = tmp_path / "cache"
    prepare([("acdc", acdc / "training")], cache, **GRID)
    first = (cache / "subjects" / "acdc_patient001" / "image.npy").stat().st_mtime_ns
    prepare([("acdc", acdc / "testing")], cache, **GRID)
    train_ids = [f"acdc_patient{i:03d}" for i in range(1, 7)]
    test_ids = [f"acdc_patient{i:03d}" for i in range(101, 104)]
    assert subjects_of(cache) == train_ids + test_ids
    c = SliceCache(cache)
    assert sorted(c.manifest.subject.unique()) == train_ids + test_ids
    info = json.loads((cache / "cache.json").read_text())
    assert [(s["reader"], s["data"], s["subjects"]) for s in info["sources"]] == [
        ("acdc", str((acdc / "training").resolve()), 6), ("acdc", str((acdc / "testing").resolve()), 3)]
    assert info["n_subjects"] == 9
    assert (cache / "subjects" / "acdc_patient001" / "image.npy").stat().st_mtime_ns == first  # not rewritten
    # preparing a source again replaces its subjects by what its folder holds now; the others stay
    shutil.rmtree(acdc / "training" / "patient006")
    prepare([("acdc", acdc / "training")], cache, **GRID)
    assert subjects_of(cache) == train_ids[:5] + test_ids
    assert len(json.loads((cache / "cache.json").read_text())["sources"]) == 2


def test_a_subject_key_another_source_holds_is_refused_before_it_is_overwritten(acdc, tmp_path):
    cache = prepare([("acdc", acdc / "training")], tmp_path / "cache", **GRID)
    meta = cache / "subjects" / "acdc_patient001" / "meta.json"
    before = meta.read_bytes()
    write_acdc_patient(tmp_path / "other", "patient001", seed=99)
    with pytest.raises(DataError, match=r"acdc_patient001.*already in the cache from another source \(acdc, "
                                        r".*training"):
        prepare([("acdc", tmp_path / "other")], cache, **GRID)
    assert meta.read_bytes() == before and len(subjects_of(cache)) == 6


def test_caches_written_before_meta_recorded_the_data_folder_are_added_to_and_prepared_again(acdc, tmp_path):
    from cardiossp.data.holdout import subjects_from_source

    cache = prepare([("acdc", acdc / "training"), ("acdc", acdc / "testing")], tmp_path / "cache", **GRID)
    for meta in cache.glob("subjects/*/meta.json"):  # as the previous version wrote them
        m = json.loads(meta.read_text())
        del m["data"], m["reader_id"]
        meta.write_text(json.dumps(m))
    tests = [f"acdc_patient{i:03d}" for i in range(101, 104)]
    assert subjects_from_source(SliceCache(cache), "acdc", acdc / "testing") == tests  # by source path
    prepare([("acdc", acdc / "training")], cache, **GRID)  # its subjects are its own again, not a clash
    assert subjects_of(cache) == [f"acdc_patient{i:03d}" for i in range(1, 7)] + tests
    meta = json.loads((cache / "subjects" / "acdc_patient002" / "meta.json").read_text())
    assert (meta["data"], meta["reader_id"]) == (str((acdc / "training").resolve()), "patient002")


# ---------------------------------------------------------------- a fixed test set
def test_split_test_from_keeps_exactly_that_folder_as_test(acdc, tmp_path):
    cache = tmp_path / "cache"
    for sub in ("training", "testing"):
        assert invoke("prepare", "-r", "acdc", "-d", acdc / sub, "--out", cache, "--spacing", 2, "--size", 32
                      ).exit_code == 0
    r = invoke("split", "--cache", cache, "--out", tmp_path / "split.yaml", "--test-from",
               f"acdc={acdc / 'testing'}", "--val", 1, "--budgets", "2")
    assert r.exit_code == 0, r.output
    split = yaml.safe_load((tmp_path / "split.yaml").read_text())
    assert split["test"] == ["acdc_patient101", "acdc_patient102", "acdc_patient103"]
    assert len(split["val"]) == 1 and len(split["train"]) == 5
    assert sorted(split["train"] + split["val"]) == [f"acdc_patient{i:03d}" for i in range(1, 7)]
    assert split["fixed_test"] == [f"acdc={(acdc / 'testing').resolve()}"] and split["unlabeled"] == []
    assert set(split["budgets"][2]) <= set(split["train"])
    # the same test set from a cache of the whole release (one source: the ACDC root)
    whole = prepare([("acdc", acdc)], tmp_path / "whole", **GRID)
    r = invoke("split", "--cache", whole, "--out", tmp_path / "whole.yaml", "--test-from", f"acdc={acdc / 'testing'}")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "whole.yaml").read_text())["test"] == split["test"]


def test_split_test_list_keeps_exactly_those_subjects(acdc, tmp_path):
    cache = prepare([("acdc", acdc / "training"), ("acdc", acdc / "testing")], tmp_path / "cache", **GRID)
    (tmp_path / "test.txt").write_text("# held out by the clinic\npatient101\nacdc_patient003\n\n")
    r = invoke("split", "--cache", cache, "--out", tmp_path / "split.yaml", "--test-list", tmp_path / "test.txt",
               "--val", 0.2)
    assert r.exit_code == 0, r.output
    split = yaml.safe_load((tmp_path / "split.yaml").read_text())
    assert split["test"] == ["acdc_patient003", "acdc_patient101"]
    assert len(split["val"]) == 1 and len(split["train"]) == 6  # 0.2 of the 7 others
    (tmp_path / "bad.txt").write_text("patient101\npatient999\n")
    assert_clean_failure(invoke("split", "--cache", cache, "--out", tmp_path / "bad.yaml", "--test-list",
                                tmp_path / "bad.txt"), "bad.txt", "patient999", "not in the cache")
    assert not (tmp_path / "bad.yaml").exists()


def test_split_test_from_refuses_a_folder_not_in_the_cache_and_test_with_it(acdc, tmp_path):
    cache = prepare([("acdc", acdc / "training")], tmp_path / "cache", **GRID)
    out = tmp_path / "split.yaml"
    assert_clean_failure(invoke("split", "--cache", cache, "--out", out, "--test-from", f"acdc={acdc / 'testing'}"),
                         "testing", "3 of the 3 acdc subject(s) here are not in the cache", "patient101",
                         "cardiossp prepare --reader acdc")
    assert_clean_failure(invoke("split", "--cache", cache, "--out", out, "--test-from",
                                f"acdc={acdc / 'training'}", "--test", 2), "--test", "not both")
    assert_clean_failure(invoke("split", "--cache", cache, "--out", out, "--test-from", "acdc"), "READER=PATH")
    assert not out.exists()


# ---------------------------------------------------------------- one writer at a time
CHILD = """
import sys
from pathlib import Path
from cardiossp.data.cache import prepare
flag = Path(sys.argv[3])
prepare([("acdc", sys.argv[1])], sys.argv[2], spacing=2.0, size=32, on_wait=lambda m: flag.write_text(m))
"""


def wait_for(paths, timeout=120.0):
    end = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert time.time() < end, f"timed out waiting for {paths}"
        time.sleep(0.05)


def test_two_concurrent_prepares_wait_for_each_other_and_give_one_correct_cache(acdc, tmp_path):
    cache = tmp_path / "cache"
    flags = [tmp_path / "waited-training", tmp_path / "waited-testing"]
    with cache_lock(cache):  # held here: both processes must wait, then write one after the other
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(acdc / sub), str(cache), str(flag)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for sub, flag in zip(("training", "testing"), flags)]
        wait_for(flags)
        assert not (cache / "cache.json").exists()  # nobody wrote while the lock was held
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    for flag in flags:
        assert f"cache is being written by prepare pid {os.getpid()}" in flag.read_text()
    # without the lock, the second writer's tables would have lost the first one's subjects
    assert subjects_of(cache) == [f"acdc_patient{i:03d}" for i in (*range(1, 7), *range(101, 104))]
    c = SliceCache(cache)
    assert len(json.loads((cache / "cache.json").read_text())["sources"]) == 2
    for key in c.subjects["subject"]:
        from cardiossp.data.slices import verify_subject

        assert verify_subject(cache / "subjects" / key, c.meta(key), 32, level="hash") == []


STALE = """
import sys, time
from pathlib import Path
from cardiossp.data.cache import cache_lock
with cache_lock(sys.argv[1]):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_prepare_is_taken_over(acdc, tmp_path):
    cache, flag = tmp_path / "cache", tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", STALE, str(cache), str(flag)])
    wait_for([flag])
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert f"pid {holder.pid}" in (cache / LOCK_NAME).read_text()  # the stale lock file is still there
    waited = []
    prepare([("acdc", acdc / "testing")], cache, on_wait=waited.append, **GRID)
    assert waited == [] and len(subjects_of(cache)) == 3


def test_experiment_shards_prepare_their_cache_and_split_under_the_lock(tmp_path, monkeypatch):
    """``experiment --shard`` jobs share ``OUT/cache`` and ``OUT/split.yaml``: the executor makes both under the
    cache's lock, so jobs started together take turns (the lock itself: the two-process tests above)."""
    import fcntl

    from cardiossp.experiments import execute, load_plan

    held = []

    def probe(*args, **kwargs):
        fd = os.open(tmp_path / "out" / "cache" / LOCK_NAME, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        raise KeyboardInterrupt  # stop here: the rest would prepare the phantom for real

    monkeypatch.setattr(execute, "prepare", probe)
    with pytest.raises(KeyboardInterrupt):
        execute.LocalExecutor().prepare(load_plan("smoke"), tmp_path / "out")
    assert held == [True]
