"""Portable, self-describing models: every segmentation checkpoint carries its input grid, normalisation,
labels, task, model config, version and git SHA, so a run folder predicts the same anywhere, without its
training cache; ``cardiossp export --format cardiossp`` writes one shareable file that does too.

The phantom cache here is 1.5 mm / 64 px, unlike the 1.25 mm / 256 px fallback, and the phantom's native
spacing is 1.2 mm, so a model run on the wrong grid gives other probabilities (checked, so the equality
tests could fail).
"""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cardiossp import __version__
from cardiossp.checkpoints import RECORD_KEY
from cardiossp.checksum import sha256_file
from cardiossp.cli import app
from cardiossp.config import TrainConfig, git_sha, load_config, to_dict
from cardiossp.data.labels import task_class_names
from cardiossp.data.readers.phantom import make_phantom_subject, write_phantom_dataset
from cardiossp.errors import CheckpointError
from cardiossp.inference import DEFAULT_SIZE, DEFAULT_SPACING, Segmenter
from cardiossp.models.weights import checksum_path, load_torch_file
from cardiossp.predict import predict_files
from cardiossp.train.export import export_model
from cardiossp.train.fit import train_segmentation

runner = CliRunner()
PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_cache):
    """A tiny finished training run on a private copy of the phantom cache (tests may hide that copy)."""
    cache, split = phantom_cache
    root = tmp_path_factory.mktemp("portable")
    own_cache = root / "cache"
    shutil.copytree(cache, own_cache)
    cfg = load_config(TrainConfig, "train", "tiny", {"schedule.epochs": 1, "schedule.iters_per_epoch": 2})
    run = train_segmentation(cfg, own_cache, split, root / "run", progress=False)
    subj = make_phantom_subject(0, seed=3, size=64, n_slices=4, n_frames=2, spacing=(1.2, 1.2, 8.0))
    return {"root": root, "run": run, "cache": own_cache, "cfg": cfg, "image": subj.image,
            "spacing": subj.spacing, "affine": subj.affine}


def probs(seg: Segmenter, t: dict) -> np.ndarray:
    return seg.predict_probs(t["image"], t["spacing"], t["affine"])


def labels(seg: Segmenter, t: dict) -> np.ndarray:
    return seg(t["image"], t["spacing"], t["affine"])


def assert_plain(obj, where="record") -> None:
    assert isinstance(obj, PLAIN), f"{where}: {type(obj).__name__} is not a plain type"
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")


def test_every_checkpoint_records_grid_normalisation_labels_task_model_version(trained):
    cfg = trained["cfg"]
    for name in ("best.ckpt", "last.ckpt"):
        obj = load_torch_file(trained["run"] / "checkpoints" / name)  # the one loader: weights_only=True
        rec = obj[RECORD_KEY]
        assert_plain(rec)
        assert rec["grid"]["spacing_mm"] == 1.5 and rec["grid"]["size_px"] == 64  # the cache's grid
        assert rec["normalisation"]["method"] == "zscore" and "cine" in rec["normalisation"]["over"]
        assert rec["task"] == "cardiac" and rec["num_classes"] == 4
        assert rec["labels"]["class_names"] == ["background", *task_class_names("cardiac").values()]
        assert rec["labels"]["internal_labels"] == [0, 1, 2, 3]
        assert rec["model"] == to_dict(cfg.model)
        assert rec["cardiossp_version"] == __version__ and rec["git_sha"] == git_sha()


def test_a_moved_run_without_its_cache_predicts_the_same_labels(trained, tmp_path):
    before = Segmenter.from_checkpoint(trained["run"])
    p0, l0 = probs(before, trained), labels(before, trained)
    wrong = Segmenter(before.model, DEFAULT_SPACING, DEFAULT_SIZE)  # what an old run folder fell back to
    assert not np.allclose(probs(wrong, trained), p0, atol=1e-3)  # the grid matters for this image
    nifti = write_phantom_dataset(tmp_path / "nifti", n_subjects=1, n_unlabeled=0, size=64, n_slices=4, n_frames=2,
                                  spacing=(1.2, 1.2, 8.0))
    out_before = predict_files(trained["run"], [nifti / "imagesTr"], tmp_path / "pred0")

    moved = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(trained["run"], moved)
    hidden = trained["cache"].with_name("cache-gone")
    trained["cache"].rename(hidden)  # the cache named by config.yaml no longer exists
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no "grid unknown" warning
            after = Segmenter.from_checkpoint(moved)
            out_after = predict_files(moved, [nifti / "imagesTr"], tmp_path / "pred1")
        assert (after.spacing, after.size) == (1.5, 64)
        assert after.checkpoint == moved / "checkpoints" / "best.ckpt"
        np.testing.assert_array_equal(probs(after, trained), p0)
        np.testing.assert_array_equal(labels(after, trained), l0)
        for a, b in zip(out_before, out_after):
            np.testing.assert_array_equal(np.asarray(nib.load(b).dataobj), np.asarray(nib.load(a).dataobj))
    finally:
        hidden.rename(trained["cache"])


def strip_record(ckpt, out):
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    del obj[RECORD_KEY]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, out)


def test_an_old_checkpoint_without_a_record_takes_the_cache_grid_else_warns(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained["run"], old)
    for name in ("best.ckpt", "last.ckpt"):
        strip_record(trained["run"] / "checkpoints" / name, old / "checkpoints" / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        seg = Segmenter.from_checkpoint(old)  # config.yaml -> the cache, which is there
    assert seg.record is None and (seg.spacing, seg.size) == (1.5, 64)
    np.testing.assert_array_equal(probs(seg, trained), probs(Segmenter.from_checkpoint(trained["run"]), trained))

    lone = tmp_path / "lone.ckpt"  # no run folder, no record: the grid is unknown
    shutil.copy(old / "checkpoints" / "best.ckpt", lone)
    with pytest.warns(UserWarning, match="training grid unknown"):
        seg = Segmenter.from_checkpoint(lone)
    assert (seg.spacing, seg.size) == (DEFAULT_SPACING, DEFAULT_SIZE)


def test_a_damaged_record_is_refused(trained, tmp_path):
    obj = torch.load(trained["run"] / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    obj[RECORD_KEY]["grid"] = {"spacing_mm": -1.0, "size_px": 64}
    torch.save(obj, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="not a grid"):
        Segmenter.from_checkpoint(tmp_path / "bad.ckpt")


def test_export_cardiossp_round_trip_with_checksum(trained, tmp_path):
    out = tmp_path / "share" / "model.pt"
    res = runner.invoke(app, ["export", str(trained["run"]), "--format", "cardiossp", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1.5 mm / 64 px" in res.output
    side = checksum_path(out)
    assert side.read_text() == f"{sha256_file(out)}  {out.name}\n"  # sha256sum -c format
    obj = load_torch_file(out, "model file")  # weights_only=True, checksum checked
    assert obj["format"] == "cardiossp-model-file-1" and obj[RECORD_KEY]["grid"]["size_px"] == 64
    assert not any(k.startswith("model.") for k in obj["state_dict"])
    assert_plain(obj[RECORD_KEY])

    hidden = trained["cache"].with_name("cache-gone")
    trained["cache"].rename(hidden)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            seg = Segmenter.from_checkpoint(out)
    finally:
        hidden.rename(trained["cache"])
    ref = Segmenter.from_checkpoint(trained["run"])
    assert (seg.spacing, seg.size) == (1.5, 64) and seg.record == ref.record
    np.testing.assert_array_equal(probs(seg, trained), probs(ref, trained))
    np.testing.assert_array_equal(labels(seg, trained), labels(ref, trained))

    data = bytearray(out.read_bytes())  # one changed byte: the checksum refuses the file
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        Segmenter.from_checkpoint(out)


def test_export_cardiossp_of_an_old_checkpoint_needs_its_cache(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained["run"], old)
    strip_record(trained["run"] / "checkpoints" / "best.ckpt", old / "checkpoints" / "best.ckpt")
    record = export_model(old, tmp_path / "old.pt")  # the record comes from the cache + config.yaml
    assert record["grid"]["spacing_mm"] == 1.5 and record["grid"]["size_px"] == 64
    lone = tmp_path / "lone" / "best.ckpt"
    lone.parent.mkdir()
    shutil.copy(old / "checkpoints" / "best.ckpt", lone)
    with pytest.raises(CheckpointError, match="input grid is unknown"):
        export_model(lone, tmp_path / "lone.pt")
    assert not (tmp_path / "lone.pt").exists()


def test_export_options(trained, tmp_path):
    res = runner.invoke(app, ["export", "--run", str(trained["run"]), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "choose cardiossp or nnunet" in res.output
    res = runner.invoke(app, ["export", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "give the run once" in res.output
    res = runner.invoke(app, ["export", "--run", str(trained["run"]), "--out", str(tmp_path / "w.pth")])  # nnunet
    assert res.exit_code == 0, res.output
    assert "network_weights" in load_torch_file(tmp_path / "w.pth")
