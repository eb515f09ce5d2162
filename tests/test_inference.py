"""Inference: safe checkpoint loading, the Segmenter (TTA, shapes, cache path), predict_files.

Real data (skipped when absent): ACDC (Bernard et al., IEEE TMI 2018), M&Ms (Campello et al.,
IEEE TMI 2021), Sunnybrook (Radau et al., MIDAS Journal 2009).
"""

from __future__ import annotations

import gzip
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from cardiossp.checkpoints import load_checkpoint
from cardiossp.config import TrainConfig, load_config, save_run_config
from cardiossp.data.cache import prepare
from cardiossp.data.labels import keep_connected_heart, keep_largest_component
from cardiossp.data.readers import get_reader
from cardiossp.data.readers.phantom import write_phantom_config
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import make_split, save_split
from cardiossp.errors import CheckpointError, DataError
from cardiossp.inference import Segmenter
from cardiossp.predict import predict_files
from cardiossp.train.segmentation import SegmentationModule

TINY = {"model.n_stages": 3, "model.base_features": 4, "model.max_features": 16}


def save_ckpt(cfg, path, seed=0):
    torch.manual_seed(seed)
    module = SegmentationModule(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return module



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    ph = write_phantom_config(root / "phantom", n_subjects=3, n_unlabeled=0, size=64, n_slices=4, n_frames=4,
                              spacing=(1.2, 1.2, 8.0))
    cache = prepare([("phantom", ph)], root / "cache", spacing=1.5, size=64)
    save_split(make_split(SliceCache(cache).subjects, val=1, test=1), root / "split.yaml")
    cfg = load_config(TrainConfig, "train", "tiny", TINY)
    save_ckpt(cfg, root / "run" / "checkpoints" / "last.ckpt")
    save_run_config(cfg, root / "run", cache=str(cache), split=str(root / "split.yaml"))
    return {"root": root, "run": root / "run", "cache": cache, "phantom": ph, "cfg": cfg}


@pytest.fixture(scope="module")
def seg(run):
    return Segmenter.from_checkpoint(run["run"])


# ------------------------------------------------------------------ checkpoints
def test_load_checkpoint_prefers_best_and_verifies_keys(run, tmp_path):
    cfg, sd = load_checkpoint(run["run"])
    assert cfg.model.n_stages == 3 and cfg.model.base_features == 4
    ref = SegmentationModule(cfg).model.state_dict()
    assert set(sd) == set(ref) and all(sd[k].shape == ref[k].shape for k in ref)
    # a run folder with best.ckpt uses it, not last.ckpt
    other = tmp_path / "run"
    shutil.copytree(run["run"], other)
    best = save_ckpt(cfg, other / "checkpoints" / "best.ckpt", seed=7)
    _, sd_best = load_checkpoint(other)
    key = "encoder.stages.0.0.convs.0.conv.weight"
    assert torch.equal(sd_best[key], best.model.state_dict()[key])
    assert not torch.equal(sd_best[key], sd[key])
    _, sd_file = load_checkpoint(other / "checkpoints" / "last.ckpt")
    assert torch.equal(sd_file[key], sd[key])


def test_checkpoint_errors(run, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoints/best.ckpt"):
        load_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(garbage)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"hyper_parameters": {"cfg": run["cfg"]}, "state_dict": {}}, unsafe)  # a dataclass: refused
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(unsafe)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a cardiossp segmentation checkpoint"):
        load_checkpoint(foreign)
    # weights of a 3-stage net under a config that says 4 stages
    ck = torch.load(run["run"] / "checkpoints" / "last.ckpt", weights_only=True)
    ck["hyper_parameters"]["cfg"]["model"]["n_stages"] = 4
    torch.save(ck, tmp_path / "other_arch.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "other_arch.ckpt")
    msg = str(e.value)
    assert "missing keys" in msg and "encoder.stages.3" in msg and "shape mismatches" in msg


def test_grid_comes_from_the_run_cache_or_defaults(run, seg, tmp_path):
    assert (seg.spacing, seg.size) == (1.5, 64)
    lone = tmp_path / "model.ckpt"
    shutil.copy(run["run"] / "checkpoints" / "last.ckpt", lone)
    with pytest.warns(UserWarning, match="grid unknown"):
        s = Segmenter.from_checkpoint(lone)
    assert (s.spacing, s.size) == (1.25, 256)


# ------------------------------------------------------------------ the segmenter
def test_forward_slices_tta_and_padding_match_a_manual_reference(seg):
    x = torch.randn(3, 62, 60)  # not divisible by the net's stride product 4: padded inside
    tta = seg.forward_slices(x.numpy(), tta=True)
    plain = seg.forward_slices(x.numpy(), tta=False)
    assert tta.shape == plain.shape == (3, 4, 62, 60)
    assert torch.allclose(tta.sum(1), torch.ones(3, 62, 60), atol=1e-5)
    xp = torch.nn.functional.pad(x[:, None], (0, 0, 0, 2), value=float(x.min()))  # (3, 1, 64, 60)
    with torch.no_grad():
        ref = [torch.softmax(seg.model(xp.flip(f)), 1).flip(f) if f else torch.softmax(seg.model(xp), 1)
               for f in [(), (2,), (3,), (2, 3)]]
    assert torch.allclose(plain, ref[0][..., :62, :], atol=1e-5)
    assert torch.allclose(tta, torch.stack(ref).mean(0)[..., :62, :], atol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-3)  # the flips did something


def test_call_shapes_per_frame_and_probs(seg):
    rng = np.random.default_rng(0)
    vol = rng.random((50, 44, 3), dtype=np.float32)
    lab3 = seg(vol, (1.4, 1.6, 8.0))
    assert lab3.shape == vol.shape and lab3.dtype == np.uint8 and lab3.max() <= 3
    # identical frames have identical z-score statistics: each frame of the 4D result equals the 3D one
    lab4 = seg(np.repeat(vol[..., None], 3, axis=3), (1.4, 1.6, 8.0))
    assert lab4.shape == (50, 44, 3, 3)
    for t in range(3):
        np.testing.assert_array_equal(lab4[..., t], lab3)
    probs = seg.predict_probs(vol, (1.4, 1.6, 8.0))
    assert probs.shape == (1, 4, 50, 44, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs[0].argmax(0), lab3)
    with pytest.raises(DataError, match="spacing"):
        seg(vol, (0.0, 1.0, 8.0))
    with pytest.raises(DataError, match="shape"):
        seg(vol[..., 0], (1.0, 1.0, 8.0))


def test_predict_cached_agrees_with_the_file_path(run, seg):
    sc = SliceCache(run["cache"])
    key = sc.subject_ids()[0]
    subject = get_reader("phantom").load(run["phantom"], sc.meta(key)["subject_id"])
    cached = seg.predict_cached(sc, key)
    assert sorted(cached) == sorted(subject.labels)
    direct = seg(subject.image, subject.spacing, subject.affine)  # z-scored over the whole 4D cine too
    for t, lab in cached.items():
        assert lab.shape == subject.image.shape[:3]
        assert (lab == direct[..., t]).mean() > 0.99  # the cache stores float16 slices
    with pytest.raises(DataError, match="frames"):
        seg.predict_cached(sc, key, frames=[99])


def test_keep_largest_component_against_a_reference():
    lab = np.zeros((20, 20, 4), np.uint8)
    lab[2:6, 2:6, 1:3] = 1  # 32 voxels
    lab[10:12, 10:12, 1] = 1  # 4 voxels: removed
    lab[14:17, 2:5, 0:2] = 3  # one RV component: kept
    lab[2:6, 8:10, 0] = 2
    lab[2:6, 12:13, 3] = 2  # two MYO components of 8 and 4 voxels
    out = keep_largest_component(lab)
    ref = lab.copy()
    ref[10:12, 10:12, 1] = 0
    ref[2:6, 12:13, 3] = 0
    np.testing.assert_array_equal(out, ref)


def test_connected_heart_keeps_the_cavity_its_myocardium_surrounds():
    """A second, false LV + MYO pair whose LV outgrows the true cavity: the per-class rule keeps the false LV,
    the heart rule the true one (LV and RV touching the kept MYO); and when the false MYO also outgrows the
    true one, the heart with the most touching voxels still wins."""
    lab = np.zeros((4, 30, 40), np.uint8)  # (Z, X, Y)
    lab[:, 4:12, 4:12] = 2
    lab[:, 6:10, 6:10] = 1  # true LV: 4 x 16 = 64 voxels inside its MYO ring (4 x 48 = 192 voxels)
    lab[:, 4:12, 12:24] = 3  # RV against the septum: 384 voxels; the true heart holds 640
    lab[1:4, 18:28, 26:38] = 1  # false LV: 3 x 120 = 360 voxels, not touching the true MYO ...
    lab[0, 18:28, 26:38] = 2  # ... under a false MYO cap of 120 voxels: the false heart holds 480
    ref = lab.copy()
    ref[:, 18:28, 26:38] = 0
    np.testing.assert_array_equal(keep_connected_heart(lab), ref)
    assert (keep_largest_component(lab)[:, 6:10, 6:10] == 1).sum() == 0  # the per-class rule loses the true LV
    big_false = lab.copy()
    big_false[0:2, 18:28, 22:26] = 2  # the false MYO grows to 200 voxels (> 192), its heart to 560 (< 640)
    assert (keep_largest_component(big_false)[:, 4:12, 4:12] == 2).sum() == 0  # per class: the false MYO
    np.testing.assert_array_equal(keep_connected_heart(big_false), ref)
    small_myo = ref.copy()  # the true heart (640 voxels) and a false one around a small MYO:
    small_myo[0, 14:18, 26:38] = 2  # false MYO, 48 voxels (< half of 192) ...
    small_myo[1:4, 14:30, 26:40] = 1  # ... on a false LV of 672 ...
    small_myo[0, 22:30, 16:40] = 3  # ... (720 touching voxels) and a false RV of 192 away from the MYO
    assert keep_connected_heart(small_myo, min_share=0.0)[:, 6:10, 6:10].max() == 0  # without the share it wins
    np.testing.assert_array_equal(keep_connected_heart(small_myo), ref)
    lv_only = np.zeros((3, 10, 10), np.uint8)
    lv_only[:, 1:4, 1:4], lv_only[1, 7:9, 7:9] = 1, 1  # no MYO (an lv task): the largest component
    np.testing.assert_array_equal(keep_connected_heart(lv_only), keep_largest_component(lv_only))


def test_segmenter_largest_component_option(seg):
    vol = np.random.default_rng(1).random((48, 48, 3), dtype=np.float32)
    from scipy import ndimage

    out = seg(vol, (1.5, 1.5, 8.0), largest_component=True)
    assert all(ndimage.label(out == c)[1] <= 1 for c in (1, 2, 3))


# ------------------------------------------------------------------ files
def _check_same_geometry(out_path, in_path, seg_labels=None):
    a, b = nib.load(out_path), nib.load(in_path)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.header.get_zooms(), b.header.get_zooms())
    assert a.get_data_dtype() == np.uint8
    data = np.asarray(a.dataobj)
    assert data.dtype == np.uint8 and data.max() <= 3
    if seg_labels is not None:
        np.testing.assert_array_equal(data, seg_labels)


def test_predict_files_keeps_geometry_on_real_files(seg, acdc_root, mnms_root, tmp_path):
    acdc = acdc_root / "patient001" / "patient001_frame01.nii.gz"
    mnms = sorted(mnms_root.glob("*/*_sa_ED.nii.gz"))[0]
    outs = predict_files(seg, [acdc, mnms], tmp_path / "out")
    assert [o.name for o in outs] == ["patient001_frame01_seg.nii.gz", f"{mnms.name[:-7]}_seg.nii.gz"]
    img = nib.load(acdc)
    direct = seg(np.asarray(img.dataobj, dtype=np.float32), img.header.get_zooms()[:3], img.affine)
    _check_same_geometry(outs[0], acdc, direct)
    _check_same_geometry(outs[1], mnms)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(o.name for o in outs)  # no temp files


def test_predict_files_4d_and_folder_input(seg, run, tmp_path):
    subject = get_reader("phantom").load(run["phantom"], "phantom000")
    src = tmp_path / "in"
    src.mkdir()
    img = nib.Nifti1Image(subject.image, subject.affine)
    img.header.set_zooms((*subject.spacing, 40.0))
    nib.save(img, src / "cine.nii.gz")
    nib.save(nib.Nifti1Image(subject.image[..., 0], subject.affine), src / "frame.nii")
    outs = predict_files(seg, [src], tmp_path / "out")
    assert sorted(o.name for o in outs) == ["cine_seg.nii.gz", "frame_seg.nii.gz"]
    cine = tmp_path / "out" / "cine_seg.nii.gz"
    _check_same_geometry(cine, src / "cine.nii.gz", seg(subject.image, subject.spacing, subject.affine))
    assert nib.load(cine).header.get_zooms()[3] == pytest.approx(40.0)
    # running again on the folder does not segment its own *_seg outputs placed there
    shutil.copy(cine, src / "cine_seg.nii.gz")
    assert len(predict_files(seg, [src], tmp_path / "out2")) == 2


def test_predict_files_dicom_series(seg, sunnybrook_root, tmp_path):
    from cardiossp.data.readers.sunnybrook import read_series

    folder = sorted((sunnybrook_root / "dicoms").iterdir())[0]
    files = {int(p.stem.split("-")[-1]): p for p in folder.glob("*.dcm")}
    _, _, index, _ = read_series(folder)
    small = tmp_path / folder.name  # 2 slices x 3 phases of the cine keep the test fast
    small.mkdir()
    for num, (z, t) in index.items():
        if z < 2 and t < 3:
            shutil.copy(files[num], small)
    (out,) = predict_files(seg, [small], tmp_path / "out")
    assert out.name == f"{folder.name}_seg.nii.gz"
    image, affine, _, _ = read_series(small)
    assert image.shape == (256, 256, 2, 3)
    res = nib.load(out)
    assert res.shape == image.shape and res.get_data_dtype() == np.uint8
    np.testing.assert_allclose(res.affine, affine, atol=1e-4)
    spacing = [float(np.linalg.norm(affine[:3, i])) for i in range(3)]
    np.testing.assert_allclose(res.header.get_zooms()[:3], spacing, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.dataobj), seg(image, spacing, affine))


def test_predict_files_bad_inputs_name_the_file_and_write_nothing(seg, acdc_root, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    out = tmp_path / "out"
    flat = bad / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), flat)
    zero = bad / "zero.nii"  # nibabel refuses to write pixdim 0: patch the header bytes (pixdim[1:4] at 80)
    nib.save(nib.Nifti1Image(np.random.rand(32, 32, 3).astype(np.float32), np.eye(4)), zero)
    raw = bytearray(zero.read_bytes())
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)
    zero.write_bytes(bytes(raw))
    corrupt = bad / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x00" * 100)[:40])
    for path, problem in [(flat, "3D or 4D"), (zero, "spacing"), (corrupt, "cannot read")]:
        with pytest.raises(DataError, match=problem) as e:
            predict_files(seg, [path], out)
        assert e.value.path == path
        assert not out.exists() or not any(out.iterdir())
    with pytest.raises(DataError, match="no .nii"):
        predict_files(seg, [tmp_path / "out"], out)
    # a good file before a bad one is written; the bad one leaves nothing behind
    good = acdc_root / "patient002" / "patient002_frame01.nii.gz"
    with pytest.raises(DataError):
        predict_files(seg, [good, corrupt], out)
    assert [p.name for p in out.iterdir()] == ["patient002_frame01_seg.nii.gz"]
