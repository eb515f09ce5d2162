"""Slice cache: prepare, manifest, lazy reading, reuse and interrupted runs."""

import json
import os

import numpy as np
import pytest

from cardiossp.data.cache import prepare
from cardiossp.data.readers import get_reader
from cardiossp.data.slices import SliceCache
from cardiossp.errors import DataError


@pytest.fixture
def acdc_subset(tmp_path, acdc_root):
    root = tmp_path / "acdc"
    root.mkdir()
    for sid in ("patient001", "patient002", "patient090"):
        os.symlink(acdc_root / sid, root / sid)
    return root


def test_prepare_manifest_and_lazy_reading(tmp_path, acdc_subset):
    out = prepare([("acdc", acdc_subset)], tmp_path / "cache", spacing=1.25, size=128)
    c = SliceCache(out)
    assert len(c.subjects) == 3
    m = c.manifest
    s90 = get_reader("acdc").load(acdc_subset, "patient090")
    rows90 = m[m.subject == "acdc_patient090"]
    assert len(rows90) == s90.n_frames * s90.n_slices  # every frame of the 4D cine
    assert rows90.labeled.sum() == 2 * s90.n_slices
    assert set(rows90[rows90.labeled].phase) == {"ED", "ES"}
    assert (rows90[~rows90.labeled].phase == "unlabeled").all()
    assert m.position.between(0, 1).all()
    img, lab = c.arrays("acdc_patient090")
    assert isinstance(img, np.memmap) and img.dtype == np.float16 and img.shape[2:] == (128, 128)
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    # ED labeled row reads the ED label map
    r = rows90[(rows90.phase == "ED") & (rows90.slice == 3)].iloc[0]
    assert c.label(r.subject, r.label_index, r.slice).max() > 0


def test_rerun_reuses_and_changed_input_recomputes(tmp_path, acdc_subset):
    out = tmp_path / "cache"
    prepare([("acdc", acdc_subset)], out, size=64)
    before = {p: p.stat().st_mtime_ns for p in out.glob("subjects/*/image.npy")}
    prepare([("acdc", acdc_subset)], out, size=64)
    assert {p: p.stat().st_mtime_ns for p in out.glob("subjects/*/image.npy")} == before
    with pytest.raises(DataError, match="spacing"):
        prepare([("acdc", acdc_subset)], out, size=96)


def test_interrupted_subject_is_not_trusted(tmp_path, acdc_subset):
    out = tmp_path / "cache"
    prepare([("acdc", acdc_subset)], out, size=64)
    meta = out / "subjects" / "acdc_patient001" / "meta.json"
    good = json.loads(meta.read_text())
    # Simulate a kill after the arrays but before meta.json: the folder must be rebuilt.
    meta.unlink()
    (out / "subjects" / "acdc_patient001" / "image.npy").write_bytes(b"garbage")
    prepare([("acdc", acdc_subset)], out, size=64)
    assert json.loads(meta.read_text())["fingerprint"] == good["fingerprint"]
    assert SliceCache(out).image("acdc_patient001", 0, 0).shape == (64, 64)
    assert not list(out.rglob("*.tmp*"))


def test_not_a_cache(tmp_path):
    with pytest.raises(DataError, match="no cache.json"):
        SliceCache(tmp_path)
