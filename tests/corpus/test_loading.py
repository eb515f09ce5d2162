"""Bad-input corpus, loading (issue 15): hostile, damaged or wrong checkpoints and unusable output
folders, through the real commands. Each case expects exit 2, one ``error:`` line naming the file and
the problem, no traceback, and (for the hostile pickle) no code run.

Every run here is tiny (6 phantom subjects at 32 px, a 4-stage 8..64 U-Net, one step per epoch).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import lightning  # noqa: F401  (imported before any invoke: its log handlers bind to the real stderr)
import nibabel as nib
import numpy as np
import pytest
import torch

from cardiossp.config import PretrainConfig, TrainConfig, load_config
from cardiossp.data.cache import prepare
from cardiossp.data.readers.phantom import write_phantom_config
from cardiossp.data.slices import SliceCache
from cardiossp.data.splits import make_split, save_split
from cardiossp.models.weights import checksum_path, save_weights
from cardiossp.train.fit import train_segmentation
from cardiossp.train.pretrain import PretrainModule, pretrain

from .harness import assert_clean_failure, invoke, left_behind

SHORT = {"schedule.epochs": 1, "schedule.iters_per_epoch": 1, "data.batch_size": 2}
TRAIN_SET = ["--set", "schedule.epochs=1", "--set", "schedule.iters_per_epoch=1", "--set", "data.batch_size=2",
             "--set", "data.patch_size=32"]
NO_WEIGHTS_ONLY = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # torch's switch that turns weights_only off


class MakesFile:
    """A hostile pickle payload: unpickling it calls ``open(marker, "w")``, i.e. creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile(path: Path, marker: Path) -> Path:
    """A file that looks like a Lightning checkpoint and runs code (creates ``marker``) when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "loops": {}, "epoch": 0, "payload": MakesFile(marker)},
               path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom cache and split, a finished segmentation run, a finished simclr pretraining run, an image."""
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    write_phantom_config(root / "raw", n_subjects=6, n_unlabeled=1, size=32, n_slices=3, n_frames=2)
    cache = prepare([("phantom", root / "raw")], root / "cache", spacing=1.5, size=32)
    split = save_split(make_split(SliceCache(cache).subjects, seed=0, val=1, test=1, budgets=[2]), root / "split.yaml")
    seg = train_segmentation(load_config(TrainConfig, "train", "tiny", {**SHORT, "data.patch_size": 32}), cache, split,
                             root / "seg", progress=False)
    pre = pretrain(load_config(PretrainConfig, "pretrain", "tiny", {**SHORT, "method": "simclr",
                                                                     "data.input_size": 32}),
                   cache, root / "simclr", split=split, progress=False)
    image = root / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 3), dtype=np.float32),
                             np.diag([1.5, 1.5, 8.0, 1.0])), image)
    return {"root": root, "cache": cache, "split": split, "seg": seg, "pre": pre, "image": image}


def train_args(world, out, *extra) -> list:
    return ["train", "--cache", world["cache"], "--split", world["split"], "--out", out, "--preset", "tiny",
            *TRAIN_SET, *extra]


# ------------------------------------------------------------------ hostile pickles
def test_the_hostile_payload_runs_code_when_loaded_unsafely(tmp_path):
    """The corpus' hostile file is real: torch.load(weights_only=False) creates its marker."""
    marker = tmp_path / "MARKER"
    path = hostile(tmp_path / "h.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_resume_from_a_hostile_last_ckpt_runs_no_code(world, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    last = hostile(out / "checkpoints" / "last.ckpt", marker)
    r = invoke(*train_args(world, out, "--resume"), env=NO_WEIGHTS_ONLY)
    assert_clean_failure(r, last, "refused", "weights_only=True")
    assert not marker.exists()
    assert not left_behind(out)


@pytest.mark.parametrize("entry", ["predict --model", "train --init", "train --init folder",
                                   "--set model.encoder_weights", "--encoder-weights"])
def test_a_hostile_file_runs_no_code_anywhere(world, tmp_path, entry):
    marker = tmp_path / "MARKER"
    path = hostile(tmp_path / ("pretrained.pt" if entry.endswith("folder") else "weights.pth"), marker)
    if entry == "predict --model":
        args = ["predict", world["image"], "--model", path, "--out", tmp_path / "pred"]
    elif entry == "train --init":
        args = train_args(world, tmp_path / "run", "--init", path)
    elif entry == "train --init folder":
        args = train_args(world, tmp_path / "run", "--init", path.parent)
    elif entry == "--set model.encoder_weights":
        args = train_args(world, tmp_path / "run", "--set", f"model.encoder_weights={path}")
    else:
        args = train_args(world, tmp_path / "run", "--encoder-weights", path)
    r = invoke(*args, env=NO_WEIGHTS_ONLY)
    assert_clean_failure(r, path.name, "refused", "weights_only=True")
    assert not marker.exists()
    assert not left_behind(tmp_path)


# ------------------------------------------------------------------ damaged files
def test_resume_from_a_truncated_last_ckpt_is_one_line(world, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    data = (world["seg"] / "checkpoints" / "last.ckpt").read_bytes()
    (out / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])
    r = invoke(*train_args(world, out, "--resume"))
    assert_clean_failure(r, out / "checkpoints" / "last.ckpt", "truncated or damaged")
    assert not left_behind(out)


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_resume_from_random_bytes_is_one_line(world, tmp_path, command):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(np.random.default_rng(1).bytes(5000))
    args = (train_args(world, out, "--resume") if command == "train" else
            ["pretrain", "--method", "simclr", "--cache", world["cache"], "--out", out, "--preset", "tiny", "--resume",
             *TRAIN_SET[:6]])
    r = invoke(*args)
    assert_clean_failure(r, out / "checkpoints" / "last.ckpt", "not a checkpoint (cannot be read as a torch file)")


def test_pretraining_cannot_resume_from_a_segmentation_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(world["seg"] / "checkpoints", out / "checkpoints")
    r = invoke("pretrain", "--method", "simclr", "--cache", world["cache"], "--out", out, "--preset", "tiny",
               "--resume", *TRAIN_SET[:6])
    assert_clean_failure(r, out / "checkpoints" / "last.ckpt", "a checkpoint of a segmentation run")


def test_resume_from_a_checkpoint_of_another_model_is_one_line(world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(world["seg"] / "checkpoints", out / "checkpoints")
    r = invoke(*train_args(world, out, "--resume", "--set", "model.base_features=16"))
    assert_clean_failure(r, out / "checkpoints" / "last.ckpt", "does not fit this run's model", "shape mismatches")


@pytest.mark.parametrize("entry", ["predict --model", "train --init"])
def test_random_bytes_are_not_a_checkpoint(world, tmp_path, entry):
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    args = (["predict", world["image"], "--model", path, "--out", tmp_path / "pred"] if entry == "predict --model"
            else train_args(world, tmp_path / "run", "--init", path))
    r = invoke(*args)
    assert_clean_failure(r, path, "not a checkpoint (cannot be read as a torch file)")


def test_pretrained_weights_with_a_checksum_mismatch_are_refused(world, tmp_path):
    run = tmp_path / "simclr"
    shutil.copytree(world["pre"], run)
    assert checksum_path(run / "pretrained.pt").is_file()  # pretraining recorded it
    record = torch.load(run / "pretrained.pt", weights_only=True)
    key = next(iter(record["state_dict"]))
    record["state_dict"][key] = record["state_dict"][key] + 1  # a still-loadable file with other weights
    torch.save(record, run / "pretrained.pt")
    r = invoke(*train_args(world, tmp_path / "ft", "--init", run))
    assert_clean_failure(r, run / "pretrained.pt", "checksum mismatch")
    assert not left_behind(tmp_path / "ft")


def test_pretraining_and_export_record_checksums_that_sha256sum_accepts(world, tmp_path):
    for f in (world["pre"] / "pretrained.pt",):
        digest, name = checksum_path(f).read_text().split()
        assert name == f.name and digest == hashlib.sha256(f.read_bytes()).hexdigest()
    out = tmp_path / "seg.pth"
    r = invoke("export", "--run", world["seg"], "--out", out)
    assert r.exit_code == 0, r.output
    assert checksum_path(out).read_text() == f"{hashlib.sha256(out.read_bytes()).hexdigest()}  seg.pth\n"
    if shutil.which("sha256sum"):
        import subprocess

        assert subprocess.run(["sha256sum", "-c", checksum_path(out).name], cwd=tmp_path,
                              capture_output=True).returncode == 0


# ------------------------------------------------------------------ the wrong kind of run
def test_a_segmentation_run_as_init_says_what_init_expects(world, tmp_path):
    r = invoke(*train_args(world, tmp_path / "ft", "--init", world["seg"]))
    line = assert_clean_failure(r, world["seg"], "segmentation (training) run", "--init expects a pretraining run")
    assert "did the pretraining run finish" not in line


def test_a_segmentation_checkpoint_as_init_says_what_init_expects(world, tmp_path):
    ckpt = world["seg"] / "checkpoints" / "last.ckpt"
    r = invoke(*train_args(world, tmp_path / "ft", "--init", ckpt))
    assert_clean_failure(r, ckpt, "segmentation checkpoint", "--init expects a pretraining run")


@pytest.mark.parametrize("which", ["folder", "last.ckpt", "pretrained.pt"])
def test_a_pretraining_run_as_predict_model_says_so(world, tmp_path, which):
    model = {"folder": world["pre"], "last.ckpt": world["pre"] / "checkpoints" / "last.ckpt",
             "pretrained.pt": world["pre"] / "pretrained.pt"}[which]
    r = invoke("predict", world["image"], "--model", model, "--out", tmp_path / "pred")
    assert_clean_failure(r, model, "pretraining run", "not a segmentation model", "fine-tune it first")
    assert not (tmp_path / "pred").exists()


# ------------------------------------------------------------------ output folders
def test_out_that_is_a_file(world, tmp_path):
    out = tmp_path / "run"
    out.write_text("a file, not a folder")
    r = invoke(*train_args(world, out))
    assert_clean_failure(r, out, "is a file, not a folder")
    assert out.read_text() == "a file, not a folder"


def test_predict_out_that_is_a_file(world, tmp_path):
    out = tmp_path / "pred"
    out.write_text("x")
    r = invoke("predict", world["image"], "--model", world["seg"], "--out", out)
    assert_clean_failure(r, out, "is a file, not a folder")


def test_out_under_a_file(world, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke(*train_args(world, blocker / "run"))
    assert_clean_failure(r, blocker, "is a file, not a folder")


def test_read_only_out_folder(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user (root?) can write into a read-only folder")
        r = invoke(*train_args(world, ro / "run"))
        assert_clean_failure(r, ro, "ermission denied")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ partial transfer
@pytest.fixture(scope="module")
def wide_pretrained(world):
    """A pretraining run of another width (16..64 features vs the tiny 8..64): 28 of 188 tensors fit."""
    folder = world["root"] / "wide"
    folder.mkdir()
    record = PretrainModule(load_config(PretrainConfig, "pretrain", "tiny", {"method": "simclr",
                                                                             "model.base_features": 16})
                            ).pretrained_record()
    save_weights(record, folder / "pretrained.pt")
    return folder


def test_partial_transfer_is_refused(world, wide_pretrained, tmp_path):
    out = tmp_path / "ft"
    r = invoke(*train_args(world, out, "--init", wide_pretrained))
    assert_clean_failure(r, wide_pretrained / "pretrained.pt", "only 28 of the model's 188 tensors",
                         "--set finetune.allow_partial=true")
    assert not left_behind(out)


def test_partial_transfer_is_accepted_with_allow_partial(world, wide_pretrained, tmp_path):
    out = tmp_path / "ft"
    r = invoke(*train_args(world, out, "--init", wide_pretrained, "--set", "finetune.allow_partial=true"))
    assert r.exit_code == 0, r.output
    assert "loaded 28 pretrained tensors" in r.output and (out / "done.json").is_file()


def test_a_full_transfer_needs_no_flag(world, tmp_path):
    r = invoke(*train_args(world, tmp_path / "ft", "--init", world["pre"]))
    assert r.exit_code == 0, r.output
    assert "loaded 128 pretrained tensors" in r.output  # encoder-only: 128 of 188, over half


# ------------------------------------------------------------------ --debug
@pytest.mark.parametrize("how", ["--debug", "CARDIOSSP_DEBUG=1"])
def test_debug_shows_the_exception(world, tmp_path, how):
    path = tmp_path / "random.ckpt"
    path.write_bytes(b"not a torch file at all")
    args = ["predict", world["image"], "--model", path, "--out", tmp_path / "pred"]
    if how == "--debug":
        r = invoke("--debug", *args)
    else:
        r = invoke(*args, env={"CARDIOSSP_DEBUG": "1"})
    assert r.exit_code != 0
    from cardiossp.errors import CheckpointError

    assert isinstance(r.exception, CheckpointError), repr(r.exception)
    assert r.exception.__traceback__ is not None
    without = invoke(*args)  # and without: the one line
    assert_clean_failure(without, path, "not a checkpoint")


# ------------------------------------------------------------------ self-training inputs
def test_pseudo_label_with_a_hostile_teacher_runs_no_code(world, tmp_path):
    marker = tmp_path / "ran"
    bad = hostile(tmp_path / "teacher.ckpt", marker)
    result = invoke("pseudo-label", "--model", bad, "--cache", world["cache"], "--split", world["split"],
                    "--out", tmp_path / "pl", "--device", "cpu", env=NO_WEIGHTS_ONLY)
    assert_clean_failure(result, bad)
    assert not marker.exists() and not (tmp_path / "pl" / "pseudo.json").exists()


def test_pseudo_label_on_a_cache_of_another_grid_is_one_line(world, tmp_path):
    other = prepare([("phantom", world["root"] / "raw")], tmp_path / "cache48", spacing=1.0, size=48)
    result = invoke("pseudo-label", "--model", world["seg"], "--cache", other, "--split", world["split"],
                    "--out", tmp_path / "pl", "--device", "cpu")
    assert_clean_failure(result, other, "px grid")
    assert not (tmp_path / "pl").exists()


def test_self_training_from_a_folder_that_is_not_a_store_is_one_line(world, tmp_path):
    (tmp_path / "notpl").mkdir()
    result = invoke(*train_args(world, tmp_path / "run", "--labeled-subjects", "2", "--pseudo-labels",
                                tmp_path / "notpl"))
    assert_clean_failure(result, tmp_path / "notpl" / "pseudo.json", "pseudo-label")
    assert left_behind(tmp_path / "run") == []


def test_self_training_on_pseudo_labels_of_another_split_is_one_line(world, tmp_path):
    store = tmp_path / "pl"
    assert invoke("pseudo-label", "--model", world["seg"], "--cache", world["cache"], "--split", world["split"],
                  "--out", store, "--device", "cpu").exit_code == 0
    record = store / "pseudo.json"
    import json

    rec = json.loads(record.read_text())
    dropped = sorted(rec["subjects"])[-1]
    del rec["subjects"][dropped]
    record.write_text(json.dumps(rec))
    result = invoke(*train_args(world, tmp_path / "run", "--labeled-subjects", "2", "--pseudo-labels", store))
    assert_clean_failure(result, record, "no pseudo-labels for")
    assert left_behind(tmp_path / "run") == []
